"""The `measure` mode of benchmarks/gpu_h200_oos.py: the committed pairs, run on a device.

Each pair runs its plan under its budget through the execution layer's backend —
`CudaBackend` on the card (an untimed warm-up, then the timed run), or `CpuBackend` for a
dry run of the plumbing on tiny requests. Weights are built once per model and freed before
the next; a pair that does not fit (`DoesNotFitError`: device out of memory, host memory) is
a result, not a failure. One CSV row per pair, flushed, so a run cut short keeps its rows.
The per-pair pieces (request, budget, plan, row fields) are `benchmarks/oos_measure.py`'s;
this round's own: the default engine, the profile's backends, a warm-up before every timed run.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.oos_measure import (
    by_model,
    failed_row,
    pair_backend,
    result_fields,
    row_head,
    row_plan,
    select_pairs,
)
from resbench.hardware import HardwareProfile, load_profile
from resbench.models import get_model
from resbench.pipeline import Request

ROOT = Path(__file__).resolve().parent.parent
MEASURED_NAME = "gpu_h200_oos_measured.csv"
MEASURED_FIELDS = ["pair_id", "status", "failure", "message", "device", "scale", "schedule",
                   "request_run", "budget_bytes_run", "latency_s", "peak_allocated_bytes",
                   "peak_reserved_bytes", "setup_s", "compute_s", "stall_s", "h2d_bytes",
                   "d2h_bytes", "pinned_host_bytes", "wall_s"]


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
    out = row_head(row, runs.device, runs.scale)
    t0 = time.perf_counter()
    try:
        backend, budget = pair_backend(runs, row, out)
        r = backend.run(row_plan(row), budget)
    except Exception as exc:  # no fit: a result; anything else: kept, on to the next pair
        return failed_row(out, exc, t0)
    return {**out, **result_fields(r, t0)}


def measure(predictions: Path, out_dir: Path, *, profile: Path, device: str = "cuda",
            scale: float = 1.0, pairs: list[str] | None = None,
            deadline_s: float = 560.0) -> Path:
    """Run the pairs of `predictions` (all, or those named) on `device`; write
    `out_dir/gpu_h200_oos_measured.csv` (and a `.json` with the environment and phases).
    On the card, a pair whose expected seconds would pass `deadline_s` is skipped."""
    from benchmarks.gpu_common import environment

    frame = select_pairs(predictions, pairs)
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
