"""Shared helpers of the GPU benchmark scripts (`benchmarks/gpu_*.py`).

Schedules are cached under `runs/schedules/` (recording a full-size request takes ~15 s of
CPU), every phase runs in its own subprocess (a fresh caching allocator per budget), and rows
are written as JSON as soon as they exist, so a run cut short still leaves its numbers.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from resbench.errors import DeviceOOMError, DoesNotFitError
from resbench.models.base import ModelSpec
from resbench.pipeline import Request
from resbench.record import record_schedule
from resbench.schedule import Schedule

MiB = 2**20
CACHE = Path("runs/schedules")
# Bump when the recorder's UnitCall fields or their meaning change (r2: fp32 GEMM/conv FLOPs
# split off, memory bytes read + written).
RECORDER_REVISION = "r2"


def request_label(r: Request) -> str:
    return f"{r.height}x{r.width}x{r.frames} {r.steps} steps cfg {'on' if r.cfg else 'off'}"


def load_schedule(spec: ModelSpec, request: Request, *, scale: float, device: str,
                  engine: str = "zoo") -> Schedule:
    """The recorded schedule of `request` by `engine` (`zoo`: `resbench.record`; else the
    engine's own `record`, e.g. `diffusers`), from the cache when present (keyed by request,
    engine and, for an engine, the torch version that recorded it)."""
    dtype = torch.float32 if device == "cpu" else None
    r = request
    tag = RECORDER_REVISION if engine == "zoo" else f"{engine}-torch{torch.__version__}"
    name = (f"{spec.name}-{r.height}x{r.width}x{r.frames}-s{r.steps}-cfg{int(r.cfg)}{r.cfg_mode[0]}"
            f"-g{r.guidance}-b{r.batch}-sc{scale}-{'fp32' if dtype else 'native'}-{tag}.pkl")
    path = CACHE / name
    if path.is_file():
        with path.open("rb") as f:
            schedule: Schedule = pickle.load(f)
        if schedule.request == asdict(request):
            return schedule
    if engine == "zoo":
        schedule = record_schedule(spec, request, scale=scale, dtype=dtype)
    else:
        from resbench.engines.base import make_engine

        schedule = make_engine(engine, spec, scale=scale).record(request, dtype=dtype)
    CACHE.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(schedule, f)
    return schedule


def pinned_h2d_probe(nbytes: int, samples: int = 5) -> dict[str, Any]:
    """H2D bandwidth of one `nbytes` copy from an exactly registered pinned buffer, on a side
    stream (as the device's copies run); median of `samples` after one warm-up."""
    host = torch.empty(nbytes, dtype=torch.uint8)
    cudart = torch.cuda.cudart()
    torch.cuda.check_error(cudart.cudaHostRegister(host.data_ptr(), nbytes, 0))
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    times = []
    for i in range(samples + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record()
            dev.copy_(host, non_blocking=True)
            end.record()
        end.synchronize()
        if i:
            times.append(start.elapsed_time(end) / 1e3)
    torch.cuda.check_error(cudart.cudaHostUnregister(host.data_ptr()))
    del dev
    torch.cuda.empty_cache()
    times.sort()
    median = times[len(times) // 2]
    return {"probe_bytes": nbytes, "probe_samples_s": times,
            "h2d_pinned_bytes_per_s": nbytes / median}


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


class Rows:
    """Rows of one phase, rewritten to `path` (JSON) after every append."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(jsonable(row))
        self.path.write_text(json.dumps(self.rows, indent=1))
        short = {k: row.get(k) for k in ("phase", "budget", "plan", "status", "latency_s",
                                         "peak_device_bytes", "max_abs_diff") if k in row}
        print("ROW", json.dumps(jsonable(short)), flush=True)
        return row


def attempt(rows: Rows, base: dict[str, Any], fn: Any) -> dict[str, Any] | None:
    """Run `fn()`; on success return its dict, else add a row saying why it failed."""
    t0 = time.perf_counter()
    try:
        return fn()
    except DeviceOOMError as exc:
        rows.add({**base, "status": "oom", "message": str(exc), "wall_s": time.perf_counter() - t0})
    except DoesNotFitError as exc:
        rows.add({**base, "status": "does_not_fit", "message": str(exc),
                  "wall_s": time.perf_counter() - t0})
    except Exception as exc:  # a bug: keep going, keep the traceback
        rows.add({**base, "status": "error", "message": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(), "wall_s": time.perf_counter() - t0})
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


RESULT_KEYS = ("latency_s", "latency_gpu_s", "setup_s", "compute_s", "stall_s", "stage_latency_s",
               "h2d_bytes", "d2h_bytes", "h2d_stream_bytes", "h2d_stream_busy_s",
               "h2d_stream_bytes_per_s", "peak_device_bytes", "peak_reserved_bytes",
               "ledger_peak_bytes", "pinned_host_bytes", "device_name")


def result_fields(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res[k] for k in RESULT_KEYS if k in res}


def run_phase(script: str, args: list[str], *, timeout_s: float) -> int:
    """Run one phase of `script` in a subprocess (its own CUDA context and allocator)."""
    cmd = [sys.executable, script, *args]
    print(f"== phase: {' '.join(args)} (timeout {timeout_s:.0f} s)", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.run(cmd, timeout=timeout_s, env=env).returncode
    except subprocess.TimeoutExpired:
        print(f"!! phase {' '.join(args)} ran past {timeout_s:.0f} s and was stopped", flush=True)
        return 124


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["card"] = torch.cuda.get_device_name()
        info["memory_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        info["card"] = "cpu (dry run)"
    return info


def gb(n: Any) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


def sec(x: Any) -> str:
    return "" if x is None else f"{x:.2f}"
