"""`resbench profile`: run one request under one plan and say where the time went.

Devices: `sim` (the simulator on a hardware profile — the default without a GPU), `cuda`
(the real card, budget emulated), `cpu` (real tensors on two CPU pools; tiny scales only,
for checking a plan's behaviour without a GPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from resbench.errors import DoesNotFitError, InputError
from resbench.hardware import HardwareProfile, detect_profile, get_profile
from resbench.models.registry import get_model
from resbench.pipeline import Request
from resbench.record import record_schedule
from resbench.residency.plan import Plan, load_plan
from resbench.residency.strategies import LayerwiseConfig
from resbench.schedule import Schedule
from resbench.trace import Tracer
from resbench.units import format_bytes

PRESET_DIRS = (Path("strategies/presets"), Path(__file__).parent / "data" / "presets")
DEFAULT_PLAN = "sglang-wan2.2"


def resolve_plan(name_or_path: str | None) -> Plan:
    """A plan TOML path, or the name of a preset in strategies/presets (default: sglang's)."""
    name = name_or_path or DEFAULT_PLAN
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        return load_plan(path)
    for folder in PRESET_DIRS:
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            return load_plan(candidate)
    raise InputError(f"plan {name!r} is neither a file nor a preset; presets: {', '.join(preset_names())}")


def preset_names() -> list[str]:
    for folder in PRESET_DIRS:
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.toml"))
    return []


def resolve_hardware(name_or_path: str | None) -> HardwareProfile:
    if name_or_path:
        return get_profile(name_or_path)
    return detect_profile() or get_profile("h100-80g")


def frugal_plan() -> Plan:
    """The least memory any plan can run in: every block streamed alone, nothing ahead."""
    return Plan(name="frugal", components=(("default", LayerwiseConfig(group_size=1, prefetch_depth=0)),))


def min_budget_bytes(schedule: Schedule, profile: HardwareProfile) -> int:
    """Peak device bytes of the most frugal plan: no plan in resbench fits in less."""
    from resbench.drivers.replay import simulate

    roomy = profile.with_capacity(1 << 50)
    return simulate(schedule, frugal_plan(), roomy, capacity_bytes=1 << 50,
                    tracer=Tracer(enabled=False)).peak_device_bytes


@dataclass(frozen=True, slots=True)
class ProfileResult:
    model: str
    device: str
    hardware: str
    request: Request
    plan: Plan
    budget_bytes: int
    latency_s: float
    compute_s: float
    stall_s: float
    h2d_bytes: int
    d2h_bytes: int
    peak_device_bytes: int
    pinned_host_bytes: int
    h2d_peak_bytes_per_s: float
    trace: pd.DataFrame = field(repr=False)
    schedule: Schedule = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def run_profile(model: str, *, plan: str | None = None, budget_bytes: int | None = None,
                device: str = "auto", hardware: str | None = None, scale: float = 1.0,
                **request_overrides: Any) -> ProfileResult:
    """Run `model` under `plan` on `device`; see the module docstring for devices."""
    spec = get_model(model)
    request = Request.for_model(spec, **request_overrides)
    the_plan = resolve_plan(plan)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "sim"
    if device not in ("sim", "cuda", "cpu"):
        raise InputError(f"device must be one of auto, sim, cuda, cpu; got {device!r}")
    profile = resolve_hardware(hardware)
    capacity = profile.usable_bytes
    if budget_bytes is not None and budget_bytes > profile.memory_capacity_bytes:
        raise InputError(f"budget {format_bytes(budget_bytes)} is above {profile.name}'s "
                         f"{format_bytes(profile.memory_capacity_bytes)}; give a smaller --budget")
    budget = budget_bytes if budget_bytes is not None else capacity
    kinds = {c.name: c.kind for c in spec.components}
    the_plan.check_components(kinds, source=the_plan.name)
    if device == "sim":
        return _profile_sim(spec.name, request, the_plan, profile, budget, scale)
    if device == "cpu":
        return _profile_cpu(spec.name, request, the_plan, profile, budget, scale)
    return _profile_cuda(spec.name, request, the_plan, profile, budget, scale)


def _profile_sim(model: str, request: Request, plan: Plan, profile: HardwareProfile,
                 budget: int, scale: float) -> ProfileResult:
    from resbench.drivers.replay import simulate

    spec = get_model(model)
    schedule = record_schedule(spec, request, scale=scale)
    tracer = Tracer()
    try:
        res = simulate(schedule, plan, profile, capacity_bytes=budget, tracer=tracer)
    except DoesNotFitError as exc:
        floor = min_budget_bytes(schedule, profile)
        raise DoesNotFitError(f"{exc}; the smallest budget any plan fits in is "
                              f"{format_bytes(floor)} ({format_bytes(floor, binary=True)})",
                              component=exc.component, unit=exc.unit,
                              missing_bytes=exc.missing_bytes, min_budget_bytes=floor) from None
    return ProfileResult(model=spec.name, device="sim", hardware=profile.name, request=request,
                         plan=plan, budget_bytes=budget, latency_s=res.latency_s,
                         compute_s=res.compute_s, stall_s=res.stall_s, h2d_bytes=res.h2d_bytes,
                         d2h_bytes=res.d2h_bytes, peak_device_bytes=res.peak_device_bytes,
                         pinned_host_bytes=res.pinned_host_bytes,
                         h2d_peak_bytes_per_s=profile.h2d_pinned_bytes_per_s,
                         trace=tracer.frame(), schedule=schedule)


def _profile_cpu(model: str, request: Request, plan: Plan, profile: HardwareProfile,
                 budget: int, scale: float) -> ProfileResult:
    from resbench.devices.cpu import CpuDevice
    from resbench.drivers.torch_driver import TorchDriver
    from resbench.models.base import build_component, materialize
    from resbench.pipeline import Pipeline
    from resbench.residency.manager import ResidencyManager

    spec = get_model(model)
    schedule = record_schedule(spec, request, scale=scale, dtype=torch.float32)
    host_bytes = sum(u.weight_bytes for u in schedule.units)
    if host_bytes > 8 * 2**30:
        raise InputError(f"--device cpu holds every weight twice in host RAM ({format_bytes(2 * host_bytes)} "
                         f"at scale {scale}); use --scale 0.05 or --device sim")
    components = {c.name: materialize(build_component(c, scale), "cpu", seed=0).float()
                  for c in spec.components}
    dev = CpuDevice(components, capacity_bytes=budget)
    tracer = Tracer()
    mgr = ResidencyManager(schedule, plan, dev, kinds=schedule.kinds, tracer=tracer)
    TorchDriver(Pipeline(spec, components, dtype=torch.float32, scale=scale), mgr).run(request)
    frame = tracer.frame()
    start = frame.loc[frame.kind == "request_start", "t_s"].min()
    end = frame.loc[frame.kind == "request_end", "t_s"].max()
    compute = frame.loc[frame.kind == "compute"]
    return ProfileResult(model=spec.name, device="cpu", hardware="cpu", request=request, plan=plan,
                         budget_bytes=budget, latency_s=float(end - start),
                         compute_s=float((compute.end_s - compute.t_s).sum()),
                         stall_s=float(frame.stall_s[frame.kind == "wait"].sum()),
                         h2d_bytes=mgr.h2d_bytes, d2h_bytes=mgr.d2h_bytes,
                         peak_device_bytes=dev.peak_bytes(), pinned_host_bytes=dev.pinned_bytes(),
                         h2d_peak_bytes_per_s=float("nan"), trace=frame, schedule=schedule)


def _profile_cuda(model: str, request: Request, plan: Plan, profile: HardwareProfile,
                  budget: int, scale: float) -> ProfileResult:
    try:
        from resbench.measure import measure_real
    except ModuleNotFoundError:
        raise InputError("--device cuda needs resbench.measure, which this build lacks") from None
    spec = get_model(model)
    out = measure_real(spec, request, plan, budget_bytes=budget, scale=scale)
    known = {f.name for f in dataclasses.fields(ProfileResult)}
    fields = {k: v for k, v in out.items() if k in known}
    fields.setdefault("h2d_peak_bytes_per_s", profile.h2d_pinned_bytes_per_s)
    extra = {k: v for k, v in out.items() if k not in known}
    return ProfileResult(model=spec.name, device="cuda", hardware=profile.name, request=request,
                         plan=plan, budget_bytes=budget, extra=extra, **fields)
