"""GPU measurements for the benchmarks: a plan under the manager, or no manager at all.

`measure_real` runs one request under a plan through the execution layer's CUDA backend
(what `profile --device cuda` and `tune --device cuda` use) and returns a plain dict for
the benchmark scripts; `measure_unmanaged` runs the same request with every weight on the
GPU and no manager or hooks (the overhead baseline).

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

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from resbench.analysis.bounds import request_window
from resbench.devices.cuda import CudaDevice, Weights, build_weights
from resbench.errors import DeviceOOMError, DoesNotFitError
from resbench.execution import Backend, CpuBackend, CudaBackend, memory_budget
from resbench.execution.backends import current_cuda
from resbench.hardware import detect_profile, get_profile
from resbench.models.base import ModelSpec, build_component, materialize
from resbench.models.registry import get_model
from resbench.pipeline import Pipeline, Request, unit_slots_of
from resbench.residency.plan import Plan
from resbench.resources import resolve_plan
from resbench.schedule import Schedule
from resbench.units import format_bytes


def prepare_weights(spec: ModelSpec | str, *, scale: float = 1.0, seed: int = 0) -> Weights:
    """Random weights for every component, host copies pinned (see `devices.cuda.build_weights`)."""
    spec = get_model(spec) if isinstance(spec, str) else spec
    return build_weights(spec.components, scale=scale, seed=seed)


def measure_real(spec: ModelSpec | str, request: Request, plan: Plan | str | Path, *,
                 budget_bytes: int | None, scale: float = 1.0, warmup: bool = True,
                 torch_profiler: bool = False, weights: Weights | None = None,
                 schedule: Schedule | None = None, keep_output: bool = False,
                 device: str = "cuda", trace: bool = True) -> dict[str, Any]:
    """Run `request` under `plan` with the residency manager on the real device, through
    `resbench.execution` (the CUDA backend; `device="cpu"`: the CPU device at tiny scale).

    `budget_bytes` caps device memory (None: the whole card). `warmup` runs the request once
    untimed first (kernel loading, cuBLAS handles). `weights` (from `prepare_weights`) and
    `schedule` are built here when not given.

    Returns the `RunResult`'s fields as a dict (latency_s, setup_s, compute_s, stall_s,
    stage_latency_s, h2d_bytes, d2h_bytes, h2d_stream_bytes, h2d_stream_bytes_per_s,
    peak_device_bytes, peak_reserved_bytes, ledger_peak_bytes, pinned_host_bytes, trace,
    output when `keep_output`), plus plan_name, device_name, schedule and torch_profiler
    (with `torch_profiler`). Raises `DeviceOOMError` or `DoesNotFitError`.
    """
    spec = get_model(spec) if isinstance(spec, str) else spec
    the_plan = plan if isinstance(plan, Plan) else resolve_plan(plan)
    profile = detect_profile() or get_profile("h100-80g")
    backend: Backend
    if device == "cpu":
        backend = CpuBackend(spec, request, profile=profile, scale=scale, schedule=schedule)
    else:
        backend = CudaBackend(spec, request, profile=profile, scale=scale, schedule=schedule,
                              weights=weights)
    prof: Any = None
    if torch_profiler:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        prof = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    res = backend.run(the_plan, budget_bytes, trace=trace, warmup=warmup,
                      keep_output=keep_output, around=prof)
    out = {f.name: getattr(res, f.name) for f in dataclasses.fields(res)}
    if not keep_output:
        out.pop("output")
    if res.trace is not None and len(res.trace):
        start, end = request_window(res.trace)  # the last request's (a steady state has two)
        out["latency_gpu_s"] = end - start
    out.update(plan_name=the_plan.name, schedule=backend.schedule,
               device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu")
    if prof is not None:
        out["torch_profiler"] = prof
    return out


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
        pipe = Pipeline(spec, weights.components, device=current_cuda(), scale=scale)
        dev = CudaDevice(unit_slots_of(pipe), weights.host, budget_bytes=budget_bytes,
                         device=pipe.device)
        oom: str | None = None
        out: dict[str, Any] = {}
        try:
            t0 = time.perf_counter()
            for key in dev.unit_keys():
                dev.place_unmanaged(key)
            torch.cuda.synchronize()
            setup_s = time.perf_counter() - t0
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


def _cuda_memory(dev: CudaDevice) -> dict[str, Any]:
    return {"peak_device_bytes": dev.peak_bytes(), "peak_reserved_bytes": dev.peak_reserved_bytes(),
            "ledger_peak_bytes": dev.ledger_peak_bytes()}


def _cpu_components(spec: ModelSpec, scale: float) -> dict[str, torch.nn.Module]:
    return {c.name: materialize(build_component(c, scale), "cpu", seed=0).float()
            for c in spec.components}


__all__ = ["DoesNotFitError", "measure_real", "measure_unmanaged", "memory_budget",
           "prepare_weights"]
