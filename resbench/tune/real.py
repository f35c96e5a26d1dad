"""Real measurements for `--device cuda` and `--validate`, through `resbench.measure`.

`resbench.measure.measure_real(spec, request, plan, *, budget_bytes, scale, weights,
schedule, trace, ...)` runs one request under a plan on the CUDA device with the budget
emulated and returns a dict (`latency_s`, `stall_s`, `h2d_bytes`, `d2h_bytes`,
`peak_device_bytes`, `pinned_host_bytes`, ...), raising `DoesNotFitError` /
`DeviceOOMError` when the plan does not fit. Weights are pinned once per tune
(`prepare_weights`, minutes at full size) and the tune's schedule is reused.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resbench.errors import InputError
from resbench.models.base import ModelSpec
from resbench.pipeline import Request
from resbench.residency.plan import Plan
from resbench.schedule import Schedule
from resbench.tune.objective import Runner

Measure = Callable[..., dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RealResult:
    """The part of `measure_real`'s dict the tuner keeps (a `RunResult`)."""

    latency_s: float
    stall_s: float
    h2d_bytes: int
    d2h_bytes: int
    peak_device_bytes: int
    pinned_host_bytes: int


def find_measure() -> tuple[Any, str]:
    """(the `resbench.measure` module, "") or (None, why measuring is unavailable here)."""
    try:
        module = importlib.import_module("resbench.measure")
    except ModuleNotFoundError as exc:
        if exc.name != "resbench.measure":
            raise
        return None, "this resbench has no resbench.measure (the real-GPU measurement hook)"
    if not hasattr(module, "measure_real"):
        return None, "resbench.measure has no measure_real"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device is visible"
    return module, ""


def require_measure() -> Any:
    module, why = find_measure()
    if module is None:
        raise InputError(f"--device cuda cannot run: {why}; use --device sim")
    return module


def real_runner(module: Any, *, model: ModelSpec, request: Request, schedule: Schedule,
                scale: float) -> Runner:
    """A `Runner` measuring on the GPU; weights are prepared on the first call."""
    weights: list[Any] = []

    def run(plan: Plan, capacity_bytes: int | None) -> RealResult:
        if not weights:
            weights.append(module.prepare_weights(model, scale=scale))
        r = module.measure_real(model, request, plan, budget_bytes=capacity_bytes, scale=scale,
                                weights=weights[0], schedule=schedule, trace=False)
        return RealResult(latency_s=float(r["latency_s"]), stall_s=float(r.get("stall_s", 0.0)),
                          h2d_bytes=int(r.get("h2d_bytes", 0)),
                          d2h_bytes=int(r.get("d2h_bytes", 0)),
                          peak_device_bytes=int(r["peak_device_bytes"]),
                          pinned_host_bytes=int(r.get("pinned_host_bytes", 0)))

    return run
