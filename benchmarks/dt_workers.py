"""The worker processes of a distributed-tuning run (`distributed_tune_gpu.py`): their command
lines, their launch (one per GPU, never two on one), and what is sampled while they run.

`Sampler`, every `every_s`: each live worker's /proc status (peaks kept on the worker), the
host's used memory, which GPU each worker's pid is on (nvidia-smi UUIDs), and when each
start-up line first appeared in a worker's log (`STARTUP_MARKS`), so that a worker's start-up
(launch to first trial) can be split into imports, schedule, weights and the plans measured
before the study.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SEED_STRIDE = 100_000
STATUS_KB = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmLck", "VmPin")
# first words of a `resbench tune` log line -> the start-up step it ends
STARTUP_MARKS = {"budget": "imports", "study": "storage opened",
                 "recording": "schedule started", "searching": "weights and start-up plans"}


def log(line: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {line}", flush=True)


@dataclass
class Worker:
    index: int
    gpu: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    json_path: Path
    launched: float
    command: list[str]
    killed_at: float | None = None
    interrupted: bool = False
    peak: dict[str, int] = field(default_factory=dict)
    gpu_seen: set[str] = field(default_factory=set)
    marks: dict[str, float] = field(default_factory=dict)  # STARTUP_MARKS key -> epoch s

    @property
    def id(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}"

    def startup_marks_s(self) -> dict[str, float]:
        """Seconds after launch at which each start-up log line was first seen."""
        return {k: round(t - self.launched, 1) for k, t in sorted(self.marks.items(),
                                                                  key=lambda kv: kv[1])}


class Sampler(threading.Thread):
    """Samples `workers` every `every_s` (see the module docstring); `gpus`: ask nvidia-smi."""

    def __init__(self, workers: list[Worker], *, gpus: bool, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.workers, self.gpus, self.every_s = workers, gpus, every_s
        self.done = threading.Event()
        self.host_used_peak = 0
        self.host_total_at_peak = 0
        self.host_used_before = host_used()[0]
        self.samples = 0

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        now = time.time()
        for w in self.workers:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{w.proc.pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in STATUS_KB:
                        w.peak[key] = max(w.peak.get(key, 0), int(value.split()[0]) * 1024)
            if len(w.marks) < len(STARTUP_MARKS):
                with contextlib.suppress(OSError):
                    for line in w.log_path.read_text(errors="replace").splitlines():
                        word = line.split(" ", 1)[0]
                        if word in STARTUP_MARKS:
                            w.marks.setdefault(word, now)
        used, total = host_used()
        if used > self.host_used_peak:
            self.host_used_peak, self.host_total_at_peak = used, total
        self.samples += 1
        if self.gpus and self.samples % 5 == 1:  # nvidia-smi takes a while: every 5th sample
            by_pid = {str(w.proc.pid): w for w in self.workers}
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=20).stdout
                for line in out.splitlines():
                    pid, _, uuid = (s.strip() for s in line.partition(","))
                    if pid in by_pid:
                        by_pid[pid].gpu_seen.add(uuid)


def host_used() -> tuple[int, int]:
    """The host's MemTotal - MemAvailable and MemTotal, in bytes (0, 0 if unreadable)."""
    try:
        info = {k: int(v.split()[0]) * 1024 for k, _, v in
                (line.partition(":") for line in Path("/proc/meminfo").read_text().splitlines())
                if k in ("MemTotal", "MemAvailable")}
        return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]
    except (OSError, ValueError, KeyError, IndexError):
        return 0, 0


def gpus_shared(workers: list[Worker]) -> bool | None:
    """Whether nvidia-smi saw two workers on one GPU (or one worker on two); None: it did not
    see every worker's process (no GPUs, or never sampled)."""
    if any(not w.gpu_seen for w in workers):
        return None
    return (len({u for w in workers for u in w.gpu_seen}) < sum(len(w.gpu_seen) for w in workers)
            or any(len(w.gpu_seen) > 1 for w in workers))


def gpu_facts() -> dict[str, Any]:
    if shutil.which("nvidia-smi") is None:
        return {"gpus": [], "driver": None}
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,uuid,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout
    rows = [[s.strip() for s in line.split(",")] for line in out.splitlines() if line.strip()]
    return {"gpus": [{"index": r[0], "name": r[1], "uuid": r[2], "memory": r[3]} for r in rows],
            "driver": rows[0][4] if rows else None}


def worker_command(args: argparse.Namespace, url: str, study: str, index: int, timeout_s: float,
                   out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "resbench", "tune", "--model", args.model, "--budget",
           args.budget, "--device", args.device, "--storage", url, "--study-name", study,
           "--n-trials", "100000", "--timeout", f"{timeout_s:g}",
           "--seed", str(args.seed + index * SEED_STRIDE), "--json", "--no-report",
           "--out", str(out / f"worker-{index}.tuned.toml")]
    if not args.with_presets:  # a folder without plans: none measured at start-up
        cmd += ["--presets", str(out / "no-presets")]
    if args.host_budget:
        cmd += ["--host-budget", args.host_budget]
    if args.hardware:
        cmd += ["--hardware", args.hardware]
    if args.engine:
        cmd += ["--engine", args.engine]
    return [*cmd, *args.request]


def launch(args: argparse.Namespace, url: str, study: str, gpus: list[str], timeout_s: float,
           out: Path) -> list[Worker]:
    """One worker per GPU in `gpus` on `study`; their files go to `out`."""
    if len(set(gpus)) != len(gpus):
        raise SystemExit(f"two workers on one GPU: {gpus}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "no-presets").mkdir(exist_ok=True)
    workers = []
    for i, gpu in enumerate(gpus):
        cmd = worker_command(args, url, study, i, timeout_s, out)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"}
        with open(out / f"worker-{i}.json", "wb") as so, open(out / f"worker-{i}.log", "wb") as se:
            # own session: a terminal's Ctrl-C reaches the launcher alone, which then sends
            # each worker exactly one SIGINT
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                    env=env, start_new_session=True)
        workers.append(Worker(i, gpu, proc, out / f"worker-{i}.log", out / f"worker-{i}.json",
                              time.time(), cmd))
    return workers
