"""Distributed tuning on GPUs: one `resbench tune --device cuda` worker per GPU, one study.

    python benchmarks/distributed_tune_gpu.py OUTDIR --storage postgresql   # ~7 min, 2 GPUs
    python benchmarks/distributed_tune_gpu.py OUTDIR --storage journal      # ~5 min
    python benchmarks/distributed_tune_gpu.py OUTDIR --tiny   # CPU: simulator workers, journal + sqlite

For each `--storage` (a PostgreSQL server started here for the run from a carried tarball,
`dt_postgres.py`; an optuna journal file; SQLite), two phases, each on a study of its own:

1. **all GPUs**: one worker per GPU (`CUDA_VISIBLE_DEVICES=i`, never two on one GPU), the same
   model, request, budget and host budget, for `--window-s` seconds; then the second worker
   is killed with SIGKILL in the middle of a trial, and the survivor goes on. The trial the
   kill left RUNNING must end FAIL, and the kill test records when and by what: the
   survivor's sweep (`resbench.tune.liveness`: the killed worker's pid is gone from this
   host; every 20 s while it runs, and when it ends) or, on PostgreSQL and SQLite, optuna's
   heartbeat (20 s beats, 120 s grace: what ends it for a worker on another host). On an
   RDB storage the launcher then stops the survivor as Ctrl-C would (SIGINT: its trial in
   flight FAIL, exit 130); on a journal file (no heartbeat in optuna 5) the survivor searches
   `--journal-wait-s` more;
2. **one GPU**: one worker on the first GPU, searching for `--window-s` seconds.

Each worker starts without the shipped presets (`--presets` names an empty folder): with
`--device cuda` a worker measures every preset on the GPU before its first trial (twice each,
the slow pageable ones too), which would cost each phase tens of seconds of start-up;
`--with-presets` restores them. The study still starts from the sweep's most frugal plan.

Both phases are read back from the storage and checked against the workers' own logs (one
line per finished trial, `resbench.tune.trial_log`): duplicates, lost trials, trials nobody
logged, trials left RUNNING (`dt_checks.py`); trials per minute and the best feasible latency
within the first `--window-s` seconds after the first trial started; each worker's start-up
(launch to its first trial); each worker's host memory (peak RSS, with both running) and the
host's; which GPU each worker's process was on (nvidia-smi).

Ctrl-C or SIGTERM stops every worker (one SIGINT each: its trial in flight FAIL, every
finished trial kept; SIGTERM after `--grace` s), then the study is read back and written
all the same. `--deadline-s` does the same by itself before a device call's time limit.

Writes `OUTDIR/summary-<storage>.json` and `OUTDIR/logs-<storage>.tgz` (worker logs and
results, journal files, the server log) per storage; the table:
`python benchmarks/distributed_tune_gpu_report.py OUTDIR...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from benchmarks import dt_checks  # noqa: E402
from benchmarks.distributed_tune import machine, public_url, stop  # noqa: E402
from benchmarks.dt_postgres import LocalPostgres  # noqa: E402
from resbench.tune.study import open_storage  # noqa: E402
from resbench.tune.trial_log import read_trial_log  # noqa: E402

SEED_STRIDE = 100_000
RDB = ("postgresql", "sqlite")
REQUEST = ["--height", "1024", "--width", "1024", "--steps", "4"]
TINY_REQUEST = ["--height", "256", "--width", "256", "--steps", "2"]
STATUS_KB = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmLck", "VmPin")


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

    @property
    def id(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}"


class Sampler(threading.Thread):
    """Every `every_s`: each live worker's /proc status (peaks kept on the worker), the host's
    used memory (MemTotal - MemAvailable: peak), and, with GPUs, which GPU each pid is on."""

    def __init__(self, workers: list[Worker], *, gpus: bool, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.workers, self.gpus, self.every_s = workers, gpus, every_s
        self.done = threading.Event()
        self.host_used_peak = 0
        self.host_total_at_peak = 0
        self.host_used_before = _host_used()[0]
        self.samples = 0

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        for w in self.workers:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{w.proc.pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in STATUS_KB:
                        w.peak[key] = max(w.peak.get(key, 0), int(value.split()[0]) * 1024)
        used, total = _host_used()
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


def _host_used() -> tuple[int, int]:
    """The host's MemTotal - MemAvailable and MemTotal, in bytes (0, 0 if unreadable)."""
    try:
        info = {k: int(v.split()[0]) * 1024 for k, _, v in
                (line.partition(":") for line in Path("/proc/meminfo").read_text().splitlines())
                if k in ("MemTotal", "MemAvailable")}
        return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]
    except (OSError, ValueError, KeyError, IndexError):
        return 0, 0


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
    if len(set(gpus)) != len(gpus):
        raise SystemExit(f"two workers on one GPU: {gpus}")
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


def load(storage: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def run_phase(args: argparse.Namespace, kind: str, url: str, n: int, out: Path,
              deadline: float) -> dict[str, Any]:
    """One phase: `n` workers on a new study; with 2 or more, the kill test on the last."""
    name = f"dt-{kind}-{n}w"
    out.mkdir(parents=True, exist_ok=True)
    kill = n > 1
    extra = (args.heartbeat_wait_s + 15 if kind in RDB else args.journal_wait_s) if kill else 0
    workers = launch(args, url, name, args.gpus[:n], args.window_s + extra, out)
    victim = workers[-1] if kill else None
    log(f"{kind}: {n} worker(s) on GPU(s) {','.join(args.gpus[:n])}, study {name}, pids "
        f"{[w.proc.pid for w in workers]}")
    storage = open_storage(url)
    sampler = Sampler(workers, gpus=args.device == "cuda")
    sampler.start()
    killed: list[int] = []
    failed_at: float | None = None
    interrupted: str | None = None  # "deadline" or "signal": the launcher stopped the run
    try:
        aiming = False  # waiting for the victim to be inside a trial: poll faster
        while any(w.proc.poll() is None for w in workers):
            time.sleep(0.1 if aiming else args.poll_s)
            if time.time() > deadline:
                log(f"{kind}: deadline reached; stopping the workers")
                interrupted = "deadline"
                break
            trials = load(storage, name)
            window = dt_checks.window(trials, args.window_s)
            if victim is None or window["t0"] is None:
                continue
            if victim.killed_at is None and time.time() >= window["t0"] + args.window_s:
                aiming = True
                busy = [t for t in trials if t.state.name == "RUNNING"
                        and t.user_attrs.get("worker") == victim.id and t.datetime_start
                        and time.time() - t.datetime_start.timestamp() >= args.kill_after_s]
                if busy or time.time() >= window["t0"] + args.window_s + args.kill_within_s:
                    aiming = False
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait()
                    victim.killed_at = time.time()
                    killed = [t.number for t in load(storage, name) if t.state.name == "RUNNING"
                              and t.user_attrs.get("worker") == victim.id]
                    log(f"{kind}: SIGKILL worker {victim.index} (pid {victim.proc.pid}) in "
                        f"trial(s) {killed}")
                    if not killed and kind in RDB:  # between two trials: nothing to wait for
                        for w in workers:
                            w.interrupted = w.proc.poll() is None
                        stop([w.proc for w in workers], args.grace)
            elif victim.killed_at is not None and failed_at is None and killed:
                states = {t.number: t.state.name for t in trials}
                if all(states.get(k) != "RUNNING" for k in killed):
                    failed_at = time.time()
                    log(f"{kind}: killed trial(s) {killed} now "
                        f"{[states.get(k) for k in killed]}, {failed_at - victim.killed_at:.0f} s "
                        f"after the kill")
                    if kind in RDB:  # the heartbeat did it; stop the survivors as Ctrl-C would
                        for w in workers:
                            w.interrupted = w.proc.poll() is None
                        stop([w.proc for w in workers], args.grace)
    except KeyboardInterrupt:
        log(f"{kind}: interrupted; stopping the workers (SIGINT each)")
        interrupted = "signal"
    finally:
        for w in workers:
            w.interrupted |= interrupted is not None and w.proc.poll() is None
        stop([w.proc for w in workers], args.grace)
        sampler.done.set()
        sampler.join()
        sampler.sample()
    trials = load(storage, name)
    if killed and failed_at is None and all(
            t.state.name != "RUNNING" for t in trials if t.number in killed):
        failed_at = time.time()  # ended by the survivor's last sweep
    return phase_summary(kind, n, name, workers, trials, sampler, killed, failed_at, interrupted,
                         args.window_s)


def phase_summary(kind: str, n: int, name: str, workers: list[Worker],
                  trials: list[optuna.trial.FrozenTrial], sampler: Sampler, killed: list[int],
                  failed_at: float | None, interrupted: str | None, window_s: float) -> dict[str, Any]:
    logs = {w.id: read_trial_log(w.log_path.read_text(errors="replace")) for w in workers}
    cut = [w.id for w in workers if w.killed_at is not None or w.interrupted]
    check = dt_checks.reconcile(trials, logs, cut)
    victim = next((w for w in workers if w.killed_at is not None), None)
    kill: dict[str, Any] | None = None
    if victim is not None:
        texts = "\n".join(w.log_path.read_text(errors="replace") for w in workers)
        by_sweep = any(f"trial {k} was left RUNNING" in texts for k in killed)
        states = {t.number: t.state.name for t in trials}
        kill = {"worker": victim.index, "trials": killed,
                # killed while holding the journal's lock: the others waited out its grace
                "journal_lock_forced": "Forcibly releasing the lock file" in texts,
                "states_after": [states.get(k) for k in killed],
                "ended_after_s": None if failed_at is None else failed_at - victim.killed_at,
                "by": ("survivor's sweep (pid gone)" if by_sweep else
                       "heartbeat" if failed_at is not None and kind in RDB else
                       "nothing" if failed_at is None else "unknown")}
    results = []
    for w in workers:
        try:
            results.append(json.loads(w.json_path.read_text()))
        except (OSError, ValueError):
            results.append(None)
    return {
        "storage": kind, "workers": n, "study": name, "interrupted": interrupted,
        "gpus": [w.gpu for w in workers],
        "gpu_uuids_seen": [sorted(w.gpu_seen) for w in workers],
        # None: nvidia-smi did not show every worker's process (no GPUs, or not sampled)
        "gpus_shared": None if any(not w.gpu_seen for w in workers) else (
            len({u for w in workers for u in w.gpu_seen}) < sum(len(w.gpu_seen) for w in workers)
            or any(len(w.gpu_seen) > 1 for w in workers)),
        "exit_codes": [w.proc.returncode for w in workers],
        "worker_ids": [w.id for w in workers],
        "startup_s": [None if (s := dt_checks.first_start(trials, w.id)) is None
                      else s - w.launched for w in workers],
        "trials_run": [None if r is None else r.get("trials_run") for r in results],
        "best_reported_s": [None if r is None else r["best"]["latency_s"] for r in results],
        "window": dt_checks.window(trials, window_s),
        "check": check, "duplicates": dt_checks.duplicates(check), "lost": dt_checks.lost(check),
        "kill": kill,
        "host_memory": {"per_worker_peak_bytes": [w.peak for w in workers],
                        "host_used_before_bytes": sampler.host_used_before,
                        "host_used_peak_bytes": sampler.host_used_peak,
                        "host_total_at_peak_bytes": sampler.host_total_at_peak},
        "commands": [f"CUDA_VISIBLE_DEVICES={w.gpu} " + " ".join(public_url(c) if "://" in c
                                                                 else c for c in w.command)
                     for w in workers],
    }


def gpu_facts() -> dict[str, Any]:
    if shutil.which("nvidia-smi") is None:
        return {"gpus": [], "driver": None}
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,uuid,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout
    rows = [[s.strip() for s in line.split(",")] for line in out.splitlines() if line.strip()]
    return {"gpus": [{"index": r[0], "name": r[1], "uuid": r[2], "memory": r[3]} for r in rows],
            "driver": rows[0][4] if rows else None}


def storage_url(kind: str, work: Path, n: int, pg: LocalPostgres | None) -> str:
    if kind == "postgresql":
        assert pg is not None
        return pg.url
    if kind == "journal":
        return str(work / f"journal-{n}w.log")
    return f"sqlite:///{work / f'sqlite-{n}w.db'}"


def run_storage(args: argparse.Namespace, kind: str, deadline: float) -> str | None:
    """Both phases on one storage; returns why the launcher stopped early (None: it did
    not)."""
    work = args.work / kind
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pg = LocalPostgres(args.pg_dist, work / "pg") if kind == "postgresql" else None
    summary: dict[str, Any] = {"schema": 1, "storage": kind, "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(), "gpu": gpu_facts(), "phases": []}
    for pkg in ("diffusers", "psycopg2-binary", "pandas"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            summary["machine"]["versions"][pkg] = metadata.version(pkg)
    path = args.outdir / f"summary-{kind}.json"
    stopped: str | None = None
    try:
        if pg is not None:
            pg.start()
            summary["postgres"] = pg.version
            log(f"postgresql: {pg.version} on 127.0.0.1:{pg.port}")
        # all GPUs first: the kill test (which waits out the heartbeat's grace) is then done
        # before a deadline could cut it short; the one-worker phase ends by its own timeout
        for n in (len(args.gpus), 1):
            url = storage_url(kind, work, n, pg)
            phase = run_phase(args, kind, url, n, work / f"{n}w", deadline)
            summary["phases"].append(phase)
            path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
            w = phase["window"]
            log(f"{kind} {n}w: {w['finished']} trials in {w['window_s']:g} s "
                f"({w['trials_per_min']:.1f}/min), best {w['best_latency_s']}, duplicates "
                f"{phase['duplicates']}, lost {phase['lost']}, running {phase['check']['running']},"
                f" kill {phase['kill']}, exit {phase['exit_codes']}")
            stopped = phase["interrupted"]
            if stopped:
                break
    finally:
        if pg is not None:
            pg.stop()
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        with tarfile.open(args.outdir / f"logs-{kind}.tgz", "w:gz") as tar:
            tar.add(work, arcname=kind, filter=lambda ti: None if "/pg/dist" in ti.name
                    or "/pg/data" in ti.name else ti)
    log(f"storage {kind}: wrote {path}")
    return stopped


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--tiny", action="store_true",
                    help="CPU check: simulator workers, small request, journal + sqlite")
    ap.add_argument("--storage", action="append", choices=("postgresql", "journal", "sqlite"))
    ap.add_argument("--gpus", default="0,1", help="one worker per GPU id [0,1]")
    ap.add_argument("--model", default="flux.1-dev")
    ap.add_argument("--engine", choices=("diffusers", "zoo"), default=None,
                    help="the workers' --engine (default: resbench's for the model)")
    ap.add_argument("--budget", default="16GB")
    ap.add_argument("--host-budget", default="100GiB")
    ap.add_argument("--hardware", default=None)
    ap.add_argument("--with-presets", action="store_true",
                    help="let each worker measure the shipped presets at start-up (with "
                         "--device cuda: several GPU runs each, some slow) and queue them")
    ap.add_argument("--window-s", type=float, default=70.0)
    ap.add_argument("--heartbeat-wait-s", type=float, default=170.0,
                    help="RDB: how long the survivor searches after the kill, at most")
    ap.add_argument("--journal-wait-s", type=float, default=40.0,
                    help="journal: how long the survivor searches after the kill")
    ap.add_argument("--kill-after-s", type=float, default=None,
                    help="kill once the victim's trial has run this long [1; tiny: 0]")
    ap.add_argument("--kill-within-s", type=float, default=None,
                    help="kill anyway if no such trial is found within this [15; tiny: 10]")
    ap.add_argument("--deadline-s", type=float, default=410.0,
                    help="stop everything this long after the start, results written")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="seconds a worker has to stop after SIGINT before SIGTERM")
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pg-dist", type=Path,
                    default=Path("wheels/postgresql-16.2-pgserver.tar.xz"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/dtgpu"))
    args, request = ap.parse_known_args(argv)
    args.device = "sim" if args.tiny else "cuda"
    args.request = request or (TINY_REQUEST if args.tiny else REQUEST)
    args.storage = args.storage or (["journal", "sqlite"] if args.tiny else ["postgresql", "journal"])
    args.gpus = args.gpus.split(",")
    if args.kill_after_s is None:
        args.kill_after_s = 0.0 if args.tiny else 1.0
    if args.kill_within_s is None:
        args.kill_within_s = 10.0 if args.tiny else 15.0
    if args.tiny:
        args.host_budget = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.deadline_s
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SIGTERM (the device call's limit, a scheduler) stops the workers like Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.device == "cuda":
        visible = len(gpu_facts()["gpus"])
        if visible < len(args.gpus):
            raise SystemExit(f"--gpus {','.join(args.gpus)} names {len(args.gpus)} GPUs; "
                             f"nvidia-smi lists {visible}")
    try:
        for kind in args.storage:
            stopped = run_storage(args, kind, deadline)
            if stopped == "signal":
                raise KeyboardInterrupt
            if stopped:
                log(f"{stopped}: storages not run: {args.storage[args.storage.index(kind) + 1:]}")
                return 1
    except KeyboardInterrupt:
        log("interrupted: workers stopped, results written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
