"""`resbench profile`: run one request under one plan and say where the time went.

Devices: `sim` (the simulator on a hardware profile — the default without a GPU), `cuda`
(the real card, budget emulated), `cpu` (real tensors on two CPU pools; tiny scales only,
for checking a plan's behaviour without a GPU). All three run through
`resbench.execution`'s backends, on the pipeline of an engine (`resbench.engines.base`):
diffusers' for the models it implements, else the zoo's, unless `engine` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from resbench.analysis.bounds import last_request
from resbench.analysis.budget import min_budget_bytes
from resbench.engines.base import make_engine
from resbench.errors import DoesNotFitError, InputError
from resbench.execution import make_backend
from resbench.hardware import HardwareProfile, detect_profile, get_profile
from resbench.models.registry import get_model
from resbench.pipeline import Request
from resbench.residency.plan import Plan
from resbench.resources import resolve_plan
from resbench.schedule import Schedule
from resbench.units import format_bytes


def resolve_hardware(name_or_path: str | None) -> HardwareProfile:
    """A preset or profile TOML; None: the detected GPU's preset, else `h100-80g`."""
    if name_or_path:
        return get_profile(name_or_path)
    return detect_profile() or get_profile("h100-80g")


@dataclass(frozen=True, slots=True)
class ProfileResult:
    model: str
    device: str
    """sim | cpu | cuda."""
    hardware: str
    """The hardware profile's name (`sim`), or the card / "cpu" that ran it."""
    request: Request
    plan: Plan
    budget_bytes: int
    latency_s: float
    compute_s: float | None
    stall_s: float | None
    h2d_bytes: int
    d2h_bytes: int
    peak_device_bytes: int
    pinned_host_bytes: int
    h2d_peak_bytes_per_s: float | None
    """The link's pinned H2D bandwidth (the profile's); None where there is no link (cpu)."""
    trace: pd.DataFrame = field(repr=False)
    """The run's events; of a steady-state run (`extra["steady_state"]`), the second request's."""
    schedule: Schedule = field(repr=False)
    profile: HardwareProfile | None = field(default=None, repr=False)
    """The hardware profile the run used (from a preset or a file)."""
    engine: str = "zoo"
    """Where the pipeline came from: diffusers | zoo (`resbench.engines.base`)."""
    extra: dict[str, Any] = field(default_factory=dict)


def run_profile(model: str, *, plan: str | None = None, budget_bytes: int | None = None,
                device: str = "auto", hardware: str | None = None, scale: float = 1.0,
                engine: str | None = None, steady_state: bool | None = None,
                **request_overrides: Any) -> ProfileResult:
    """Run `model` under `plan` on `device`; see the module docstring for devices. `engine`:
    diffusers | zoo (None: diffusers for the models it implements, else zoo).
    `steady_state`: report the second of two back-to-back requests (True; what a server's
    warm calls are), one request (False), or as the plan needs (None: two for a plan that
    keeps blocks between requests)."""
    spec = get_model(model)
    the_engine = make_engine(engine, spec, scale=scale)
    request = Request.for_model(spec, **request_overrides)
    the_plan = resolve_plan(plan)
    profile = resolve_hardware(hardware)
    if budget_bytes is not None and budget_bytes > profile.memory_capacity_bytes:
        raise InputError(f"budget {format_bytes(budget_bytes)} is above {profile.name}'s "
                         f"{format_bytes(profile.memory_capacity_bytes)}; give a smaller --budget")
    budget = budget_bytes if budget_bytes is not None else profile.usable_bytes
    the_plan.check_components({c.name: c.kind for c in spec.components}, source=the_plan.name)
    backend = make_backend(device, spec, request, profile=profile, scale=scale,
                           engine=the_engine)
    backend.steady_state = steady_state
    try:
        res = backend.run(the_plan, budget)
    except DoesNotFitError as exc:
        floor = min_budget_bytes(backend.schedule, profile)
        raise DoesNotFitError(f"{exc}; the smallest budget any plan fits in is "
                              f"{format_bytes(floor)} ({format_bytes(floor, binary=True)})",
                              component=exc.component, unit=exc.unit,
                              missing_bytes=exc.missing_bytes, min_budget_bytes=floor) from None
    finally:
        backend.close()
    extra: dict[str, Any] = {"engine": the_engine.name, "setup_s": res.setup_s,
                             "stage_latency_s": res.stage_latency_s,
                             "ledger_peak_bytes": res.ledger_peak_bytes}
    if res.peak_reserved_bytes is not None:
        extra["peak_reserved_bytes"] = res.peak_reserved_bytes
    if res.steady_state:
        extra.update(steady_state=True, cold_latency_s=res.cold_latency_s)
    if res.h2d_stream_bytes:
        extra.update(h2d_stream_bytes=res.h2d_stream_bytes,
                     h2d_stream_bytes_per_s=res.h2d_stream_bytes_per_s)
    if backend.kind == "cuda":
        extra["device_name"] = torch.cuda.get_device_name()
    return ProfileResult(
        model=spec.name, device=backend.kind,
        hardware=profile.name if backend.kind != "cpu" else "cpu", request=request,
        plan=the_plan, budget_bytes=budget, latency_s=res.latency_s, compute_s=res.compute_s,
        stall_s=res.stall_s, h2d_bytes=res.h2d_bytes, d2h_bytes=res.d2h_bytes,
        peak_device_bytes=res.peak_device_bytes, pinned_host_bytes=res.pinned_host_bytes,
        h2d_peak_bytes_per_s=profile.h2d_pinned_bytes_per_s if backend.kind != "cpu" else None,
        # a steady-state run's figures are its second request's: so is the trace its reports
        # read (the first, cold, request is `extra["cold_latency_s"]`)
        trace=last_request(res.trace) if res.trace is not None else pd.DataFrame(),
        schedule=backend.schedule, profile=profile, engine=the_engine.name, extra=extra)
