"""The `measure` mode of benchmarks/gpu_h200_oos.py: the committed pairs, run on a device.

Each pair runs its plan under its budget through the execution layer's backend —
`CudaBackend` on the card (an untimed warm-up, then the timed run), or `CpuBackend` for a
dry run of the plumbing on tiny requests. Weights are built once per model and freed before
the next; a pair that does not fit (`DoesNotFitError`: device out of memory, host memory) is
a result, not a failure. One CSV row per pair, flushed, so a run cut short keeps its rows.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from resbench.errors import DoesNotFitError
from resbench.hardware import HardwareProfile, load_profile
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.resources import resolve_plan
from resbench.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
MEASURED_NAME = "gpu_h200_oos_measured.csv"
MEASURED_FIELDS = ["pair_id", "status", "failure", "message", "device", "scale", "schedule",
                   "request_run", "budget_bytes_run", "latency_s", "peak_allocated_bytes",
                   "peak_reserved_bytes", "setup_s", "compute_s", "stall_s", "h2d_bytes",
                   "d2h_bytes", "pinned_host_bytes", "wall_s"]
DRY_SIZE = 32
"""--device cpu: every request shrinks to 32x32 (5 frames for video), at most 2 steps."""


def fingerprint(schedule: Schedule) -> str:
    """A short hash of what the simulator replays (units, calls, state), to show that the
    measured run's recording is the one the prediction used."""
    return hashlib.sha1(repr((schedule.units, schedule.calls, schedule.state_bytes)).encode()
                        ).hexdigest()[:12]


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run `predict` and commit its output before "
                         f"measuring (the predictions must precede the GPU run)")
    return pd.read_csv(path)


def run_request(row: Any, device: str) -> Request:
    """The request a row runs: as predicted on the card, shrunk for a CPU dry run."""
    spec = get_model(row.model)
    if device == "cuda":
        return Request.for_model(spec, height=int(row.height), width=int(row.width),
                                 frames=int(row.frames), steps=int(row.steps), cfg=bool(row.cfg))
    return Request.for_model(spec, height=DRY_SIZE, width=DRY_SIZE,
                             frames=5 if spec.is_video else 1, steps=min(2, int(row.steps)),
                             cfg=bool(row.cfg))


class ModelRuns:
    """The backends of one model (one per request), sharing weights built once on the card."""

    def __init__(self, model: str, *, device: str, scale: float,
                 profile: HardwareProfile) -> None:
        self.spec = get_model(model)
        self.device, self.scale, self.profile = device, scale, profile
        self.weights = None
        if device == "cuda":  # pinned once, shared by every request's backend
            from resbench.devices.cuda import build_weights

            self.weights = build_weights(self.spec.components, scale=scale)
        self.backends: dict[Request, Any] = {}

    def backend(self, request: Request) -> Any:
        from benchmarks.gpu_common import load_schedule
        from resbench.execution import CpuBackend, CudaBackend

        if request not in self.backends:
            schedule = load_schedule(self.spec, request, scale=self.scale, device=self.device)
            common: dict[str, Any] = {"profile": self.profile, "scale": self.scale, "schedule": schedule}
            self.backends[request] = (
                CudaBackend(self.spec, request, weights=self.weights, **common)
                if self.device == "cuda" else CpuBackend(self.spec, request, **common))
        return self.backends[request]

    def close(self) -> None:
        import torch

        for b in self.backends.values():
            b.close()  # the shared host weights: unregistered by the first, then a no-op
        self.backends.clear()
        self.weights = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure_pair(runs: ModelRuns, row: Any) -> dict[str, Any]:
    """One pair's row: its measured figures, or why it did not fit, or the error."""
    request = run_request(row, runs.device)
    out: dict[str, Any] = {"pair_id": row.pair_id, "device": runs.device, "scale": runs.scale,
                           "request_run": f"{request.height}x{request.width}x{request.frames}"
                                          f"s{request.steps}"}
    t0 = time.perf_counter()
    try:
        backend = runs.backend(request)
        budget = None if pd.isna(row.budget_bytes) else int(row.budget_bytes)  # None: the card
        if runs.device != "cuda" and budget is not None:  # the same share of the weights
            weights = sum(u.weight_bytes for u in backend.schedule.units)
            budget = int(budget * weights / row.model_weight_bytes)
        out.update(schedule=fingerprint(backend.schedule), budget_bytes_run=budget)
        source = row.plan_source
        r = backend.run(resolve_plan(ROOT / source if source.endswith(".toml") else source),
                        budget)
    except DoesNotFitError as exc:  # DeviceOOMError and HostMemoryError too
        return {**out, "status": "no_fit", "failure": type(exc).__name__, "message": str(exc),
                "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # a bug: keep it, go on with the next pair
        return {**out, "status": "error", "failure": type(exc).__name__,
                "message": f"{exc}\n{traceback.format_exc()}", "wall_s": time.perf_counter() - t0}
    return {**out, "status": "ok", "latency_s": r.latency_s,
            "peak_allocated_bytes": r.peak_device_bytes,
            "peak_reserved_bytes": r.peak_reserved_bytes, "setup_s": r.setup_s,
            "compute_s": r.compute_s, "stall_s": r.stall_s, "h2d_bytes": r.h2d_bytes,
            "d2h_bytes": r.d2h_bytes, "pinned_host_bytes": r.pinned_host_bytes,
            "wall_s": time.perf_counter() - t0}


def by_model(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Rows by model, models in order of first appearance, rows in file order."""
    for model in dict.fromkeys(frame.model):
        yield model, frame[frame.model == model]


def measure(predictions: Path, out_dir: Path, *, profile: Path, device: str = "cuda",
            scale: float = 1.0, pairs: list[str] | None = None,
            deadline_s: float = 560.0) -> Path:
    """Run the pairs of `predictions` (all, or those named) on `device`; write
    `out_dir/gpu_h200_oos_measured.csv` (and a `.json` with the environment and phases).
    On the card, a pair whose expected seconds would pass `deadline_s` is skipped."""
    from benchmarks.gpu_common import environment

    frame = read_predictions(predictions)
    if pairs:
        unknown = sorted(set(pairs) - set(frame.pair_id))
        if unknown:
            raise SystemExit(f"unknown pair ids {unknown}; see {predictions}")
        frame = frame[frame.pair_id.isin(pairs)]
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + deadline_s
    log: dict[str, Any] = {"command": " ".join(sys.argv), "environment": environment(),
                           "predictions": str(predictions), "models": []}
    log_path = (out_dir / MEASURED_NAME).with_suffix(".json")
    path = out_dir / MEASURED_NAME
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MEASURED_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for model, rows in by_model(frame):
            log_path.write_text(json.dumps(log, indent=1))
            t0 = time.perf_counter()
            runs = ModelRuns(model, device=device, scale=scale, profile=load_profile(profile))
            log["models"].append({"model": model, "weights_s": time.perf_counter() - t0})
            try:
                for row in rows.itertuples():
                    if device == "cuda" and time.time() + row.expected_gpu_s > deadline:
                        res = {"pair_id": row.pair_id, "status": "skipped", "message": "deadline"}
                    else:
                        res = measure_pair(runs, row)
                    writer.writerow(res)
                    f.flush()
                    os.fsync(f.fileno())
                    print("ROW", json.dumps({k: res.get(k) for k in (
                        "pair_id", "status", "latency_s", "peak_allocated_bytes", "failure")}),
                        flush=True)
            finally:
                runs.close()
    log_path.write_text(json.dumps(log, indent=1))
    return path
