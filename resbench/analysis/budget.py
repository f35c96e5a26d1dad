"""What a bigger budget buys: latency of a set of plans across device-memory budgets.

Re-simulates the schedule (tracing off) for each (plan, budget); a plan that does not fit
a budget is a row with ``fits = False``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from resbench.drivers.replay import simulate
from resbench.errors import DoesNotFitError
from resbench.hardware import HardwareProfile
from resbench.residency.plan import Plan
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig
from resbench.schedule import Schedule
from resbench.trace import Tracer

_UNBOUNDED_BYTES = 2**60

def frugal_plan(schedule: Schedule | None = None) -> Plan:
    """Every block streamed alone, nothing ahead: the least memory a plan can run in. A
    component the schedule merges an adapter into cannot be streamed: it is offloaded whole,
    brought in only for its use."""
    merged = tuple((c, OffloadConfig(prefetch=False)) for c in (schedule.merged if schedule else ()))
    return Plan(name="frugal", components=(
        ("default", LayerwiseConfig(group_size=1, prefetch_depth=0)), *merged))


def needed_budget_bytes(schedule: Schedule, plan: Plan, profile: HardwareProfile, *,
                        call_times_s: Sequence[float] | None = None) -> int | None:
    """The smallest budget `plan` fits in on `profile`: the peak of its static version run
    without a budget (the dynamic policy would keep everything there), plus its buffer
    margin, grown by the profile's fragmentation share (the simulator takes that share off
    every budget). None when the plan cannot run at all."""
    static = dataclasses.replace(plan, policy="static") if plan.policy == "dynamic" else plan
    try:
        res = simulate(schedule, static, profile.with_capacity(_UNBOUNDED_BYTES),
                       capacity_bytes=_UNBOUNDED_BYTES, call_times_s=call_times_s)
    except DoesNotFitError:
        return None
    margin = plan.buffer_margin_bytes if plan.policy == "dynamic" else 0
    if not profile.allocator_large_buffer_bytes:
        return math.ceil((res.peak_device_bytes + margin) / (1.0 - profile.fragmentation_fraction))
    # The caching allocator is modelled: fit is decided on reserved bytes, which a cap lowers
    # (cached segments are released under it). Bisect between the allocated peak and the
    # reserve of the uncapped run; the answer is within 1/64 of that gap above the true one.
    low, high = res.peak_device_bytes, max(res.peak_device_bytes, res.peak_reserved_bytes or 0)
    for _ in range(6):
        if high - low <= profile.allocator_rounding_bytes:
            break
        mid = (low + high) // 2
        try:
            simulate(schedule, static, profile, capacity_bytes=mid, call_times_s=call_times_s)
        except DoesNotFitError:
            low = mid
        else:
            high = mid
    return high + margin


def min_budget_bytes(schedule: Schedule, profile: HardwareProfile, *,
                     call_times_s: Sequence[float] | None = None) -> int:
    """The smallest budget any plan fits in: what `frugal_plan` needs. `profile` and `tune`
    both quote this figure."""
    need = needed_budget_bytes(schedule, frugal_plan(schedule), profile,
                               call_times_s=call_times_s)
    assert need is not None, "the frugal plan runs without a budget"
    return need


def default_budgets(schedule: Schedule, profile: HardwareProfile, points: int = 14) -> list[int]:
    """Budgets from what the most frugal plan needs up to the card's capacity, in whole GB
    where the range allows (10^9 B)."""
    floor = min_budget_bytes(schedule, profile)
    top = profile.memory_capacity_bytes
    if floor >= top:
        return [top]
    grid = np.linspace(floor, top, points)
    step = 10**9 if top - floor > points * 10**9 else 1
    budgets = sorted({int(np.ceil(b / step) * step) for b in grid[1:-1]} | {floor, top})
    return [b for b in budgets if b <= top]


def budget_curve(schedule: Schedule, plans: Mapping[str, Plan], profile: HardwareProfile,
                 budgets: Sequence[int]) -> pd.DataFrame:
    """One row per (plan, budget): ``plan``, ``budget_bytes``, ``fits``, ``latency_s``,
    ``stall_s``, ``peak_device_bytes``, ``missing_bytes`` (NaN latency when it does not fit)."""
    rows = []
    for name, plan in plans.items():
        for budget in budgets:
            try:
                res = simulate(schedule, plan, profile, capacity_bytes=int(budget),
                               tracer=Tracer(enabled=False))
            except DoesNotFitError as exc:
                rows.append({"plan": name, "budget_bytes": int(budget), "fits": False,
                             "latency_s": np.nan, "stall_s": np.nan, "peak_device_bytes": 0,
                             "missing_bytes": int(exc.missing_bytes)})
                continue
            rows.append({"plan": name, "budget_bytes": int(budget), "fits": True,
                         "latency_s": res.latency_s, "stall_s": res.stall_s,
                         "peak_device_bytes": res.peak_device_bytes, "missing_bytes": 0})
    return pd.DataFrame(rows, columns=["plan", "budget_bytes", "fits", "latency_s", "stall_s",
                                       "peak_device_bytes", "missing_bytes"])


def _with_resident_blocks(plan: Plan, k: int) -> Plan:
    table = {key: (dataclasses.replace(cfg, resident_blocks=k) if isinstance(cfg, LayerwiseConfig)
                   else cfg) for key, cfg in plan.components}
    return dataclasses.replace(plan, components=tuple(table.items()))


def filled_curve(schedule: Schedule, plan: Plan, profile: HardwareProfile,
                 budgets: Sequence[int], name: str | None = None) -> pd.DataFrame:
    """`plan` with its layerwise components keeping as many blocks resident as each budget
    allows (the same count for each; found by bisection): what the extra memory buys when
    it is spent on the plan itself. Columns of `budget_curve` plus ``resident_blocks``.
    """
    streams = any(isinstance(cfg, LayerwiseConfig) for _, cfg in plan.components)
    most = max((sum(1 for u in schedule.component_units(c) if u.block_index >= 0)
                for c in schedule.components), default=0)
    label = name or f"{plan.name} + resident blocks"
    rows = []
    for budget in budgets:
        lo, hi, best = 0, most if streams else 0, None
        while lo <= hi:
            k = (lo + hi) // 2
            try:
                res = simulate(schedule, _with_resident_blocks(plan, k), profile,
                               capacity_bytes=int(budget), tracer=Tracer(enabled=False))
            except DoesNotFitError:
                hi = k - 1
                continue
            best = (k, res)
            lo = k + 1
        if best is None:
            rows.append({"plan": label, "budget_bytes": int(budget), "fits": False,
                         "latency_s": np.nan, "stall_s": np.nan, "peak_device_bytes": 0,
                         "missing_bytes": 0, "resident_blocks": 0})
            continue
        k, res = best
        rows.append({"plan": label, "budget_bytes": int(budget), "fits": True,
                     "latency_s": res.latency_s, "stall_s": res.stall_s,
                     "peak_device_bytes": res.peak_device_bytes, "missing_bytes": 0,
                     "resident_blocks": k})
    return pd.DataFrame(rows)
