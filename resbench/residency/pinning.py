"""Which host copies are pinned: one rule, for the manager's setup and the tuner's estimate.

Pinned (page-locked) host memory copies at full PCIe speed but is a scarce host resource
counted against a budget, so it is spent only where weights move during requests.
"""

from __future__ import annotations

from collections.abc import Mapping

from resbench.models.base import UnitInfo
from resbench.residency.index import ScheduleIndex
from resbench.residency.plan import Plan
from resbench.residency.strategies import STRATEGIES
from resbench.schedule import Schedule


def pinned_units(plan: Plan, schedule: Schedule,
                 kinds: Mapping[str, str] | None = None) -> list[UnitInfo]:
    """The units whose host copies `plan` pins, in the order the manager registers them.

    With ``plan.host.pinned``, every unit of a component whose strategy moves its weights
    during requests (not `resident` ones: a resident or unmanaged component is read from the
    host once) is pinned, component by component in schedule order, first fit within
    ``plan.host.pinned_budget_bytes``: a unit that would pass the cap stays pageable, and a
    later, smaller one may still fit. `kinds` (component → kind) resolves the plan's group
    entries; default the schedule's.
    """
    if not plan.host.pinned:
        return []
    kinds = schedule.kinds if kinds is None else kinds
    cap = plan.host.pinned_budget_bytes
    pinned: list[UnitInfo] = []
    total = 0
    for comp, units in ScheduleIndex.of(schedule).units_by_component.items():
        if STRATEGIES[plan.applied_config(comp, kinds.get(comp, "")).name].resident:
            continue
        for u in units:
            if cap is None or total + u.weight_bytes <= cap:
                pinned.append(u)
                total += u.weight_bytes
    return pinned
