"""The `measure` mode of the out-of-sample rounds (`benchmarks/oos_round.py`, run through a
round's script, e.g. `benchmarks/gpu_oos4.py measure`): the committed pairs, on one device.

One process. Per model the diffusers engine's weights are built once (drawn on the card,
pinned on the host) and shared by every request's `CudaBackend`; per model the first pair
expected to fit runs once untimed (kernels, cuBLAS / cuDNN handles; a model's requests
share them, and the VAE decodes one latent frame at a time), then every pair runs
once, timed, warm. A pair that does not fit (`DoesNotFitError`: device out of memory, host
memory) is a result, not a failure. One CSV row per pair, flushed, so a run cut short keeps
its rows; pairs whose expected seconds would pass the deadline are skipped, named.
``--device cpu --scale 0.02`` runs the same loop through `CpuBackend` on tiny requests
(plumbing only; its numbers mean nothing). Writes two files under the folder given: the
measured CSV (per-stage latency and allocated-bytes peaks included), `<name>_units.csv` (the
card's GPU seconds per unit and stage, from the traced run) and a JSON beside them (command,
environment, phases).
"""

from __future__ import annotations

import contextlib
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
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.resources import resolve_plan
from resbench.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "diffusers"
MEASURED_FIELDS = ["pair_id", "status", "failure", "message", "device", "scale", "schedule",
                   "request_run", "budget_bytes_run", "warm_up", "latency_s",
                   "peak_allocated_bytes", "peak_reserved_bytes", "setup_s", "compute_s",
                   "stall_s", "h2d_bytes", "d2h_bytes", "pinned_host_bytes", "wall_s",
                   "elapsed_s", "stage_latency_s", "stage_max_allocated_bytes",
                   "allocated_before_bytes", "allocated_after_bytes"]
COMPUTE_FIELDS = ["pair_id", "stage", "component", "unit", "calls", "compute_s"]
"""The third file: per pair, the card's GPU seconds of each unit's calls (from the trace's
compute spans), to set against the cost model unit by unit."""
DRY_SIZE = 32
"""--device cpu: every request shrinks to 32x32 (5 frames for video), at most 2 steps."""
WEIGHTS_S = {"wan2.2": 50.0, "flux.1-dev": 28.0}  # as oos_round.WEIGHTS_S: deadline checks


def fingerprint(schedule: Schedule) -> str:
    """A short hash of what the simulator replays (units, calls, state), to show that the
    measured run's recording is the one the prediction used."""
    return hashlib.sha1(repr((schedule.units, schedule.calls, schedule.state_bytes)).encode()
                        ).hexdigest()[:12]


def record_schedule(model: str, request: Request, *, scale: float, dtype: Any = None) -> Schedule:
    """The diffusers engine's recording of `request` (cached under runs/schedules/ by
    `benchmarks.gpu_common.load_schedule`)."""
    from benchmarks.gpu_common import load_schedule

    return load_schedule(get_model(model), request, scale=scale,
                         device="cpu" if dtype is not None else "cuda", engine=ENGINE)


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run `predict` and commit its output before "
                         f"measuring (the predictions must precede the GPU run)")
    return pd.read_csv(path)


def select_pairs(predictions: Path, pairs: list[str] | None) -> pd.DataFrame:
    """The committed pairs of `predictions`: all, or those named (an unknown name exits)."""
    frame = read_predictions(predictions)
    if pairs:
        unknown = sorted(set(pairs) - set(frame.pair_id))
        if unknown:
            raise SystemExit(f"unknown pair ids {unknown}; see {predictions}")
        frame = frame[frame.pair_id.isin(pairs)]
    return frame


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

    def __init__(self, model: str, *, device: str, scale: float) -> None:
        from resbench.engines.base import make_engine
        from resbench.hardware import get_profile

        self.spec = get_model(model)
        self.device, self.scale = device, scale
        self.profile = get_profile("h200-141g")  # unused by the real run's timing
        self.engine = make_engine(ENGINE, self.spec, scale=scale)
        self.weights = self.engine.cuda_weights(seed=0) if device == "cuda" else None
        self.backends: dict[Request, Any] = {}
        self.warm = False  # whether a run of this model has warmed the kernels up

    def backend(self, request: Request) -> Any:
        from resbench.execution import CpuBackend, CudaBackend

        if request not in self.backends:
            common: dict[str, Any] = {"profile": self.profile, "scale": self.scale,
                                      "engine": self.engine}
            if self.device == "cuda":
                schedule = record_schedule(self.spec.name, request, scale=self.scale)
                self.backends[request] = CudaBackend(self.spec, request, weights=self.weights,
                                                     schedule=schedule, **common)
            else:
                self.backends[request] = CpuBackend(self.spec, request, **common)
        return self.backends[request]

    def close(self) -> None:
        import torch

        for b in self.backends.values():
            b.close()  # the shared host weights: unregistered by the first, then a no-op
        self.backends.clear()
        if self.weights is not None:
            self.weights.host.close()
        self.weights = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure_pair(runs: ModelRuns, row: Any) -> dict[str, Any]:
    """One pair's row: its measured figures, or why it did not fit, or the error. The first
    pair of a model expected to fit runs once untimed before its timed run."""
    out = row_head(row, runs.device, runs.scale)
    t0 = time.perf_counter()
    try:
        backend, budget = pair_backend(runs, row, out)
        warm_up = bool(row.pred_fits) and not runs.warm
        out["warm_up"] = warm_up
        plan = row_plan(row)
        # traced: the CUDA device times every call with events whether traced or not, so
        # the trace adds host-side rows only; it gives per-stage latency and per-unit compute
        out["allocated_before_bytes"] = _allocated(runs.device)  # what no unit holds
        r = backend.run(plan, budget, trace=True, warmup=warm_up)
        out["allocated_after_bytes"] = _allocated(runs.device)
        runs.warm = True
    except Exception as exc:  # no fit: a result; anything else: kept, on to the next pair
        return failed_row(out, exc, t0)
    stages, peaks, units = trace_summary(r.trace)
    return {**out, **result_fields(r, t0), "stage_latency_s": json.dumps(stages),
            "stage_max_allocated_bytes": json.dumps(peaks), "units": units}


def row_head(row: Any, device: str, scale: float) -> dict[str, Any]:
    """The fields of a pair's row known before it runs."""
    request = run_request(row, device)
    return {"pair_id": row.pair_id, "device": device, "scale": scale,
            "request_run": f"{request.height}x{request.width}x{request.frames}s{request.steps}"}


def pair_backend(runs: Any, row: Any, out: dict[str, Any]) -> tuple[Any, int | None]:
    """A pair's backend (from `runs`, the model's backends by request) and budget; `out` gets
    the schedule's fingerprint and the budget run."""
    backend = runs.backend(run_request(row, runs.device))
    budget = run_budget(row, runs.device, backend.schedule)
    out.update(schedule=fingerprint(backend.schedule), budget_bytes_run=budget)
    return backend, budget


def run_budget(row: Any, device: str, schedule: Schedule) -> int | None:
    """The budget a pair runs under (None: the card); off the card, the same share of the
    (tiny) weights."""
    budget = None if pd.isna(row.budget_bytes) else int(row.budget_bytes)
    if device != "cuda" and budget is not None:
        weights = sum(u.weight_bytes for u in schedule.units)
        budget = int(budget * weights / row.model_weight_bytes)
    return budget


def row_plan(row: Any) -> Any:
    """A row's plan: a preset name, or a plan file under the repository."""
    source = row.plan_source
    return resolve_plan(ROOT / source if source.endswith(".toml") else source)


def failed_row(out: dict[str, Any], exc: Exception, t0: float) -> dict[str, Any]:
    """A pair that did not run: no fit (`DoesNotFitError`: device out of memory, host
    memory) is a result; any other exception is a bug, kept with its traceback."""
    if isinstance(exc, DoesNotFitError):
        return {**out, "status": "no_fit", "failure": type(exc).__name__, "message": str(exc),
                "wall_s": time.perf_counter() - t0}
    return {**out, "status": "error", "failure": type(exc).__name__,
            "message": f"{exc}\n{traceback.format_exc()}", "wall_s": time.perf_counter() - t0}


def result_fields(r: Any, t0: float) -> dict[str, Any]:
    """A run's measured figures."""
    return {"status": "ok", "latency_s": r.latency_s, "peak_allocated_bytes": r.peak_device_bytes,
            "peak_reserved_bytes": r.peak_reserved_bytes, "setup_s": r.setup_s,
            "compute_s": r.compute_s, "stall_s": r.stall_s, "h2d_bytes": r.h2d_bytes,
            "d2h_bytes": r.d2h_bytes, "pinned_host_bytes": r.pinned_host_bytes,
            "wall_s": time.perf_counter() - t0}


def _allocated(device: str) -> int | None:
    """Bytes the caching allocator has allocated now (None off the card)."""
    import torch

    return int(torch.cuda.memory_allocated()) if device == "cuda" else None


def trace_summary(trace: pd.DataFrame | None) -> tuple[dict[str, float], dict[str, int],
                                                         list[dict[str, Any]]]:
    """(seconds per stage, the most bytes allocated at a manager action per stage, per
    (stage, component, unit) calls and GPU seconds) of one traced run."""
    if trace is None or trace.empty:
        return {}, {}, []
    start = trace.loc[trace.kind == "request_start", "t_s"].min()
    request = trace[trace.t_s >= start]
    enters = request[request.kind == "stage_enter"].groupby("stage").t_s.min()
    exits = request[request.kind == "stage_exit"].groupby("stage").t_s.max()
    stages = {str(k): float(exits[k] - enters[k]) for k in enters.index if k in exits.index}
    memory = trace[trace.kind == "memory"]
    peaks = {str(k): int(v) for k, v in memory.groupby("stage").device_bytes.max().items()}
    compute = request[request.kind == "compute"].assign(
        seconds=lambda d: d.end_s - d.t_s)
    units = [{"stage": st, "component": c, "unit": u, "calls": int(len(g)),
              "compute_s": float(g.seconds.sum())}
             for (st, c, u), g in compute.groupby(["stage", "component", "unit"], sort=False)]
    return stages, peaks, units


def by_model(frame: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Rows by model, models in order of first appearance, rows in file order."""
    for model in dict.fromkeys(frame.model):
        yield model, frame[frame.model == model]


def environment() -> dict[str, Any]:
    import subprocess

    import torch

    info: dict[str, Any] = {"torch": torch.__version__,
                            "date": time.strftime("%Y-%m-%d %H:%M %Z", time.gmtime())}
    try:
        import diffusers
        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, card=torch.cuda.get_device_name(),
                    memory_total_bytes=torch.cuda.get_device_properties(0).total_memory,
                    visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,"
                                  "memory.total,pci.bus_id", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        info["card"] = "cpu (dry run)"
    with contextlib.suppress(ValueError, OSError):
        info["host_mem_available_bytes"] = (os.sysconf("SC_AVPHYS_PAGES")
                                            * os.sysconf("SC_PAGE_SIZE"))
    return info


def measure(predictions: Path, out_dir: Path, *, device: str = "cuda", scale: float = 1.0,
            pairs: list[str] | None = None, deadline_s: float = 262.0,
            measured_name: str = "gpu_oos3_measured.csv",
            host_limit_bytes: int | None = None) -> Path:
    """Run the pairs of `predictions` (all, or those named) on `device`; write
    `out_dir/measured_name` (and a `.json` with the environment and phases). A pair needing
    more host memory than `host_limit_bytes` is skipped, named (the machine is shared)."""
    start = time.perf_counter()
    frame = select_pairs(predictions, pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {"command": " ".join(sys.argv), "environment": environment(),
                           "predictions": str(predictions), "deadline_s": deadline_s,
                           "models": []}
    log_path = (out_dir / measured_name).with_suffix(".json")
    path = out_dir / measured_name

    def late(seconds: float) -> bool:
        return device == "cuda" and time.perf_counter() - start + seconds > deadline_s

    units_path = path.with_name(path.stem + "_units.csv")
    with path.open("w", newline="") as f, units_path.open("w", newline="") as fu:
        writer = csv.DictWriter(f, fieldnames=MEASURED_FIELDS, extrasaction="ignore")
        writer.writeheader()
        unit_writer = csv.DictWriter(fu, fieldnames=COMPUTE_FIELDS)
        unit_writer.writeheader()

        def write(res: dict[str, Any]) -> None:
            res["elapsed_s"] = time.perf_counter() - start
            writer.writerow(res)
            for u in res.pop("units", ()):
                unit_writer.writerow({"pair_id": res["pair_id"], **u})
            f.flush()
            fu.flush()
            os.fsync(f.fileno())
            print("ROW", json.dumps({k: res.get(k) for k in (
                "pair_id", "status", "latency_s", "peak_allocated_bytes", "failure",
                "elapsed_s")}), flush=True)

        for model, rows in by_model(frame):
            log_path.write_text(json.dumps(log, indent=1))
            if late(WEIGHTS_S.get(model, 30.0) + float(rows.expected_gpu_s.min())):
                for row in rows.itertuples():
                    write({"pair_id": row.pair_id, "status": "skipped", "message": "deadline"})
                continue
            t0 = time.perf_counter()
            print(f"building {model} weights", flush=True)
            runs = ModelRuns(model, device=device, scale=scale)
            log["models"].append({"model": model, "weights_s": time.perf_counter() - t0})
            print(f"{model} weights in {time.perf_counter() - t0:.1f} s", flush=True)
            try:
                for row in rows.itertuples():
                    extra = (2 * row.expected_gpu_s if row.pred_fits and not runs.warm
                             else row.expected_gpu_s)
                    host = getattr(row, "pred_host_bytes", None)
                    if host_limit_bytes is not None and host is not None and host > host_limit_bytes:
                        res = {"pair_id": row.pair_id, "status": "skipped",
                               "message": f"host memory: needs {host / 1e9:.1f} GB"}
                    elif late(extra):
                        res = {"pair_id": row.pair_id, "status": "skipped", "message": "deadline"}
                    else:
                        res = measure_pair(runs, row)
                    write(res)
            finally:
                runs.close()
    log["total_s"] = time.perf_counter() - start
    log_path.write_text(json.dumps(log, indent=1))
    return path
