"""Measure one request under one plan on the real GPU (or, at tiny scale, on the CPU device).

`measure_real` is what `resbench profile --device cuda` and `resbench tune --device cuda`
call; `measure_unmanaged` runs the same request with every weight on the GPU and no manager
(the overhead baseline). Both return a plain dict (keys below) so callers pick what they need.

Timing: `latency_s` is host wall-clock from the start of the request to its output being
ready, with a device synchronize on both sides; one-time setup (resident loads) is excluded
and reported as `setup_s`. Per-stage and per-transfer times come from CUDA events in the
trace (`trace`, a DataFrame in `resbench.trace`'s schema).

The memory budget is emulated with `torch.cuda.set_per_process_memory_fraction`, which
caps the caching allocator; peaks are reported as allocated and reserved bytes.

Weights are random (seeded) and built once per process by `prepare_weights` (minutes of
pinning at full size): pass the result as `weights=` to every call after the first.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from resbench.devices.cuda import CudaDevice, Weights, build_weights
from resbench.drivers.torch_driver import TorchDriver
from resbench.errors import DeviceOOMError, DoesNotFitError
from resbench.models.base import REST, ModelSpec, build_component, materialize
from resbench.models.registry import get_model
from resbench.pipeline import Pipeline, Request
from resbench.record import record_schedule
from resbench.residency.manager import ResidencyManager
from resbench.residency.plan import Plan, load_plan
from resbench.residency.strategies import LayerwiseConfig
from resbench.schedule import Schedule
from resbench.trace import Tracer
from resbench.units import format_bytes


def prepare_weights(spec: ModelSpec | str, *, scale: float = 1.0, seed: int = 0,
                    share_identical: bool = True) -> Weights:
    """Random weights for every component, host copies pinned (see `devices.cuda.build_weights`)."""
    spec = get_model(spec) if isinstance(spec, str) else spec
    return build_weights(spec.components, scale=scale, seed=seed, share_identical=share_identical)


@contextlib.contextmanager
def memory_budget(budget_bytes: int | None, device: torch.device | str = "cuda") -> Iterator[None]:
    """Cap this process's caching allocator at `budget_bytes` (None: the whole card)."""
    if budget_bytes is None:
        yield
        return
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if budget_bytes > total:
        raise ValueError(f"budget {format_bytes(budget_bytes)} is above the card's "
                         f"{format_bytes(total)}")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(budget_bytes / total, index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


class _TimedManager(ResidencyManager):
    """The manager, plus synchronized wall-clock marks around setup and the request."""

    marks: dict[str, float]

    def _sync(self) -> float:
        if self.device.kind == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def setup(self) -> None:
        self.marks = {"setup_start": self._sync()}
        begin = getattr(self.device, "begin_setup", None)
        if begin is not None:
            begin()
        super().setup()
        end = getattr(self.device, "end_setup", None)
        if end is not None:
            end()
        self.marks["setup_end"] = self._sync()

    def request_start(self) -> None:
        self.marks["request_start"] = self._sync()
        super().request_start()

    def request_end(self) -> None:
        super().request_end()
        self.marks["request_end"] = self._sync()


def _load_plan(plan: Plan | str | Path) -> Plan:
    if isinstance(plan, Plan):
        return plan
    if Path(plan).is_file():
        return load_plan(plan)
    from resbench.profile import resolve_plan  # a preset name

    return resolve_plan(str(plan))


def measure_real(spec: ModelSpec | str, request: Request, plan: Plan | str | Path, *,
                 budget_bytes: int | None, scale: float = 1.0, warmup: bool = True,
                 torch_profiler: bool = False, weights: Weights | None = None,
                 schedule: Schedule | None = None, keep_output: bool = False,
                 device: str = "cuda", trace: bool = True) -> dict[str, Any]:
    """Run `request` under `plan` with the residency manager on the real device.

    `budget_bytes` caps device memory (None: the whole card). `warmup` runs the request once
    untimed first (kernel loading, cuBLAS handles). `weights` (from `prepare_weights`) and
    `schedule` (from `record_schedule`) are built here when not given. `device="cpu"` runs
    at tiny scale on `CpuDevice` (fp32) to check the code path without a GPU.

    Returns a dict with: latency_s, latency_gpu_s, setup_s, compute_s, stall_s,
    stage_latency_s {stage: s}, h2d_bytes, d2h_bytes, h2d_stream_bytes (layerwise streaming),
    h2d_stream_bytes_per_s (bytes / copy-busy seconds of those copies), peak_device_bytes
    (max allocated), peak_reserved_bytes, ledger_peak_bytes (weights and pools in program
    order), pinned_host_bytes, device_name, trace (DataFrame), schedule, plan_name, and
    output (on the CPU) when `keep_output`. Raises `DeviceOOMError` (allocator out of memory,
    device memory freed first) or `DoesNotFitError`.
    """
    spec = get_model(spec) if isinstance(spec, str) else spec
    the_plan = _load_plan(plan)
    if device == "cpu":
        schedule = schedule or record_schedule(spec, request, scale=scale, dtype=torch.float32)
    else:
        schedule = schedule or record_schedule(spec, request, scale=scale)
        weights = weights or prepare_weights(spec, scale=scale)
    with memory_budget(budget_bytes if device == "cuda" else None):
        if warmup:
            _run_once(spec, request, the_plan, schedule, weights, budget_bytes, device, scale,
                      profile=False, keep_output=False, trace=False)
        return _run_once(spec, request, the_plan, schedule, weights, budget_bytes, device, scale,
                         profile=torch_profiler, keep_output=keep_output, trace=trace)


def _cpu_components(spec: ModelSpec, scale: float) -> dict[str, torch.nn.Module]:
    return {c.name: materialize(build_component(c, scale), "cpu", seed=0).float()
            for c in spec.components}


def _run_once(spec: ModelSpec, request: Request, plan: Plan, schedule: Schedule,
              weights: Weights | None, budget: int | None, device: str, scale: float, *,
              profile: bool, keep_output: bool, trace: bool) -> dict[str, Any]:
    from resbench.devices.cpu import CpuDevice

    tracer = Tracer(enabled=trace)
    dev: Any
    if device == "cpu":
        components = _cpu_components(spec, scale)
        dev = CpuDevice(components, capacity_bytes=budget or 1 << 62)
        pipe = Pipeline(spec, components, device="cpu", dtype=torch.float32, scale=scale)
    else:
        assert weights is not None
        dev = CudaDevice(weights.components, weights.host, budget_bytes=budget)
        pipe = Pipeline(spec, weights.components, device=dev.device, scale=scale)
    mgr = _TimedManager(schedule, plan, dev, kinds=schedule.kinds, tracer=tracer)
    driver = TorchDriver(pipe, mgr)
    prof_ctx: Any = contextlib.nullcontext()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        prof_ctx = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    oom: str | None = None
    out: dict[str, Any] = {}
    try:
        with prof_ctx as prof:
            output = driver.run(request)
        if keep_output:
            out["output"] = output.detach().float().cpu()
        del output
    except torch.cuda.OutOfMemoryError:
        call = schedule.calls[driver.cursor - 1] if driver.cursor else None
        where = f"{call.component}.{call.unit} (call {call.index}, stage {call.stage})" if call else "setup"
        oom = (f"out of device memory while running {where} under plan {plan.name} with a "
               f"{format_bytes(budget) if budget else 'full-card'} budget; allocated "
               f"{format_bytes(torch.cuda.memory_allocated())}, peak "
               f"{format_bytes(torch.cuda.max_memory_allocated())}")
        oom_key = (call.component, call.unit) if call else (None, None)
    finally:
        if device == "cuda" and oom is None:
            out.update(_cuda_memory(dev))
        if device == "cuda":
            dev.close()
        gc.collect()
    if oom is not None:
        raise DeviceOOMError(oom, component=oom_key[0], unit=oom_key[1])
    frame = tracer.frame() if trace else pd.DataFrame()
    marks = mgr.marks
    out.update(summarize(frame, plan, schedule) if trace else {})
    out.update({
        "plan_name": plan.name,
        "latency_s": marks["request_end"] - marks["request_start"],
        "setup_s": marks["setup_end"] - marks["setup_start"],
        "h2d_bytes": mgr.h2d_bytes,
        "d2h_bytes": mgr.d2h_bytes,
        "pinned_host_bytes": dev.pinned_bytes(),
        "ledger_peak_bytes": dev.ledger.peak if device == "cpu" else out.get("ledger_peak_bytes"),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "trace": frame,
        "schedule": schedule,
    })
    if device == "cpu":
        out["peak_device_bytes"] = dev.peak_bytes()
    if profile:
        out["torch_profiler"] = prof
    return out


def _cuda_memory(dev: CudaDevice) -> dict[str, Any]:
    return {"peak_device_bytes": dev.peak_bytes(), "peak_reserved_bytes": dev.peak_reserved_bytes(),
            "ledger_peak_bytes": dev.ledger.peak}


def layerwise_components(plan: Plan, schedule: Schedule) -> list[str]:
    kinds = schedule.kinds
    return [c for c in schedule.components
            if isinstance(plan.config_for(c, kinds.get(c, "")), LayerwiseConfig)]


def summarize(frame: pd.DataFrame, plan: Plan, schedule: Schedule) -> dict[str, Any]:
    """Trace-derived numbers: GPU latency, per-stage latency, compute, stall, streaming H2D."""
    start = frame.loc[frame.kind == "request_start", "t_s"].min()
    end = frame.loc[frame.kind == "request_end", "t_s"].max()
    compute = frame[frame.kind == "compute"]
    request = frame[frame.t_s >= start]
    enters = request[request.kind == "stage_enter"].groupby("stage").t_s.min()
    exits = request[request.kind == "stage_exit"].groupby("stage").t_s.max()
    stage_latency = {str(k): float(exits[k] - enters[k]) for k in enters.index if k in exits.index}
    streamed = request[(request.kind == "load") & (request.stream == "h2d")
                       & request.component.isin(layerwise_components(plan, schedule))
                       & (request.unit != REST)]
    busy = float((streamed.end_s - streamed.t_s).sum())
    nbytes = int(streamed.bytes.sum())
    return {
        "latency_gpu_s": float(end - start),
        "compute_s": float((compute.end_s - compute.t_s)[compute.t_s >= start].sum()),
        "stall_s": float(request.stall_s[request.kind == "wait"].sum()),
        "stage_latency_s": stage_latency,
        "h2d_stream_bytes": nbytes,
        "h2d_stream_busy_s": busy,
        "h2d_stream_bytes_per_s": nbytes / busy if busy > 0 else float("nan"),
    }


def measure_unmanaged(spec: ModelSpec | str, request: Request, *, budget_bytes: int | None = None,
                      scale: float = 1.0, warmup: bool = True, weights: Weights | None = None,
                      keep_output: bool = False, device: str = "cuda") -> dict[str, Any]:
    """Every weight on the device before the request, no manager and no hooks: the baseline.

    Returns latency_s (synchronized wall clock), latency_gpu_s (events), setup_s,
    peak_device_bytes, peak_reserved_bytes, device_name and output (when `keep_output`).
    """
    spec = get_model(spec) if isinstance(spec, str) else spec
    if device == "cpu":
        pipe = Pipeline(spec, _cpu_components(spec, scale), dtype=torch.float32, scale=scale)
        if warmup:
            pipe.run(request)
        t0 = time.perf_counter()
        output = pipe.run(request)
        latency = time.perf_counter() - t0
        out = {"latency_s": latency, "latency_gpu_s": latency, "setup_s": 0.0,
               "device_name": "cpu"}
        if keep_output:
            out["output"] = output
        return out
    weights = weights or prepare_weights(spec, scale=scale)
    with memory_budget(budget_bytes):
        dev = CudaDevice(weights.components, weights.host, budget_bytes=budget_bytes)
        oom: str | None = None
        out: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            for key in dev.unit_keys():
                dev.place_unmanaged(key)
            torch.cuda.synchronize()
            setup_s = time.perf_counter() - t0
            pipe = Pipeline(spec, weights.components, device=dev.device, scale=scale)
            if warmup:
                pipe.run(request)
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            begin.record()
            output = pipe.run(request)
            end.record()
            torch.cuda.synchronize()
            latency = time.perf_counter() - t0
            out = {"latency_s": latency, "latency_gpu_s": begin.elapsed_time(end) / 1e3,
                   "setup_s": setup_s, "device_name": torch.cuda.get_device_name(),
                   **_cuda_memory(dev)}
            if keep_output:
                out["output"] = output.detach().float().cpu()
            del output
        except torch.cuda.OutOfMemoryError:
            oom = (f"unmanaged run out of device memory ({format_bytes(torch.cuda.memory_allocated())} "
                   f"allocated)")
        finally:
            dev.close()
    if oom is not None:
        raise DeviceOOMError(oom)
    return out


__all__ = ["DoesNotFitError", "measure_real", "measure_unmanaged", "memory_budget",
           "prepare_weights", "summarize"]
