"""Which host copies are pinned: one rule, for the manager's setup and the tuner's estimate.

Pinned (page-locked) host memory copies at full PCIe speed but is a scarce host resource
counted against a budget, so it is spent only where weights move during requests, and under
a cap on the units that cross the link most often: pinning a unit saves the same seconds on
each of its copies (pageable − pinned time of its bytes), so a byte of the cap is worth most
on the unit copied most.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from resbench.devices.base import UnitKey
from resbench.models.base import REST, UnitInfo
from resbench.residency.index import ScheduleIndex
from resbench.residency.plan import Plan
from resbench.residency.strategies import STRATEGIES
from resbench.residency.strategies.layerwise import LayerwiseConfig, split_blocks
from resbench.schedule import Schedule


def copies_per_request(plan: Plan, schedule: Schedule,
                       kinds: Mapping[str, str] | None = None) -> dict[UnitKey, int]:
    """Host→device copies of each unit `plan` moves in one request, by the strategies' rules
    (not `resident` components: they are copied once, at setup): a layerwise component's
    streamed block once per visit of its group (each forward, `ScheduleIndex.visit_table`),
    its resident blocks once (they come in with the first use and stay to the end), its rest,
    and every unit of a component brought in whole (`offload`, `snapshot`), once per use of
    the component. A dynamic policy may keep a component over uses; then this counts an
    upper bound."""
    kinds = schedule.kinds if kinds is None else kinds
    index = ScheduleIndex.of(schedule)
    uses = Counter(u.component for u in index.uses)
    out: dict[UnitKey, int] = {}
    for comp, units in index.units_by_component.items():
        cfg = plan.applied_config(comp, kinds.get(comp, ""))
        if STRATEGIES[cfg.name].resident:
            continue
        per_use = uses[comp]
        if isinstance(cfg, LayerwiseConfig):
            resident, streamed = split_blocks(units, cfg)
            g = cfg.group_size
            groups = [[u.name for u in streamed[i:i + g]] for i in range(0, len(streamed), g)]
            visits = Counter(k for seq in index.visit_table(comp, groups, cfg.prefetch_depth)
                             .by_use.values() for k in seq)
            out.update({(comp, u.name): min(1, per_use) for u in resident})
            out.update({(comp, name): visits[k] for k, grp in enumerate(groups) for name in grp})
            out.update({(comp, u.name): per_use for u in units if u.name == REST})
        else:
            out.update({(comp, u.name): per_use for u in units})
    return out


def pinned_units(plan: Plan, schedule: Schedule,
                 kinds: Mapping[str, str] | None = None) -> list[UnitInfo]:
    """The units whose host copies `plan` pins, in the order the manager registers them
    (schedule order).

    With ``plan.host.pinned``, every unit of a component whose strategy moves its weights
    during requests (not `resident` ones: a resident or unmanaged component is read from the
    host once) is pinned. Under ``plan.host.pinned_budget_bytes`` the units go in by
    `copies_per_request`, most copied first (ties in schedule order), first fit: a unit that
    would pass the cap stays pageable, and a later, smaller one may still fit. `kinds`
    (component → kind) resolves the plan's group entries; default the schedule's.
    """
    if not plan.host.pinned:
        return []
    copies = copies_per_request(plan, schedule, kinds)
    moved = [u for u in schedule_units(schedule) if (u.component, u.name) in copies]
    cap = plan.host.pinned_budget_bytes
    if cap is None:
        return moved
    chosen: set[UnitKey] = set()
    total = 0
    for u in sorted(moved, key=lambda u: -copies[(u.component, u.name)]):  # stable: ties keep order
        if total + u.weight_bytes <= cap:
            chosen.add((u.component, u.name))
            total += u.weight_bytes
    return [u for u in moved if (u.component, u.name) in chosen]


def schedule_units(schedule: Schedule) -> list[UnitInfo]:
    """The schedule's units, component by component in schedule order."""
    return [u for units in ScheduleIndex.of(schedule).units_by_component.values() for u in units]
