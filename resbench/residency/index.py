"""Lookahead tables of one schedule, computed once and shared by every plan scored on it.

The manager and the layerwise strategy ask the same questions of the schedule at every call
(which use starts or ends here, when is this component used next, which group visit starts
here). None of the answers depend on the plan, except a layerwise component's visits, which
depend only on how its blocks are grouped. `ScheduleIndex.of(schedule)` answers them from
tables built once per schedule, so a tuner scoring thousands of plans on one schedule pays
for them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resbench.devices.base import UnitKey
from resbench.errors import InputError
from resbench.models.base import UnitInfo
from resbench.schedule import ComponentUse, MergeCall, Schedule


@dataclass(frozen=True, slots=True)
class UseInterval:
    index: int
    stage: str
    component: str
    first: int  # index of the first call
    last: int  # index of the last call
    allow_prefetch: bool
    keep_after_request: bool


def use_intervals(schedule: Schedule) -> list[UseInterval]:
    """One interval per (stage, component), ordered by first call."""
    spans: dict[tuple[str, str], list[int]] = {}
    for call in schedule.calls:
        span = spans.setdefault((call.stage, call.component), [call.index, call.index])
        span[1] = call.index
    declared = {(u.stage, u.component): u for u in schedule.uses}
    out = []
    for i, ((stage, comp), (first, last)) in enumerate(sorted(spans.items(), key=lambda kv: kv[1][0])):
        use = declared.get((stage, comp), ComponentUse(stage, comp))
        out.append(UseInterval(i, stage, comp, first, last, use.allow_prefetch, use.keep_after_request))
    return out


@dataclass(frozen=True, slots=True)
class VisitTable:
    """What a layerwise component streams at each of its calls, for one grouping of its
    blocks and one prefetch depth, over all its uses.

    A *visit* is a maximal run of consecutive calls (of this component) to one group.
    `by_use[u]` is the sequence of groups visited in use `u`, in call order. `starts` maps
    the call index of a visit's first call to ``(group, ahead, handoff)``: the group that
    must be on the device, the groups of the same use to have in flight behind it (the next
    `depth` visits), and how many groups of the *next* use to prefetch because the depth
    reaches past this use's end (0: none). `done` maps the call index of a visit's last
    call to its group, which may leave after that call.
    """

    by_use: dict[int, tuple[int, ...]]
    starts: dict[int, tuple[int, tuple[int, ...], int]]
    done: dict[int, int]


class ScheduleIndex:
    """Plan-independent lookups over one schedule; build with `ScheduleIndex.of`."""

    _cache: dict[int, ScheduleIndex] = {}
    _cache_size = 8
    max_visit_tables = 64
    """Visit tables kept (~0.5 MB each for a 40-step Wan2.2 DiT; ~2 ms to rebuild)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.uses = use_intervals(schedule)
        self.begin_at = {u.first: u for u in self.uses}
        self.end_at: dict[int, list[UseInterval]] = {}
        for u in self.uses:
            self.end_at.setdefault(u.last, []).append(u)
        self.unit_bytes: dict[UnitKey, int] = {(u.component, u.name): u.weight_bytes
                                               for u in schedule.units}
        self.units_by_component: dict[str, list[UnitInfo]] = {}
        for unit in schedule.units:
            self.units_by_component.setdefault(unit.component, []).append(unit)
        # next_of[c][i]: the first use of component c at position ≥ i in `uses`
        self._next_of: dict[str, list[UseInterval | None]] = {}
        for comp in {u.component for u in self.uses}:
            table: list[UseInterval | None] = [None] * (len(self.uses) + 1)
            for i in range(len(self.uses) - 1, -1, -1):
                table[i] = self.uses[i] if self.uses[i].component == comp else table[i + 1]
            self._next_of[comp] = table
        self.merges_at: dict[int, list[MergeCall]] = {}
        self.merges_of: dict[str, list[MergeCall]] = {}
        first_call: dict[str, int] = {}
        for call in schedule.calls:
            first_call.setdefault(call.component, call.index)
        for m in schedule.merges:
            if first_call.get(m.component, m.before_call) < m.before_call:
                # its base weights would be needed again by the next request, which no
                # strategy that keeps the merged copy could give back
                raise InputError(
                    f"schedule {schedule.model}: {m.component} runs (call "
                    f"{first_call[m.component]}) before {m.adapter} is merged into it (call "
                    f"{m.before_call}); give the merged weights their own component")
            self.merges_at.setdefault(m.before_call, []).append(m)
            self.merges_of.setdefault(m.component, []).append(m)
        self._own_calls: dict[int, list[tuple[int, str]]] | None = None
        self._visits: dict[tuple[str, tuple[tuple[str, ...], ...], int], VisitTable] = {}

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleIndex:
        """The index of `schedule`, built on first request and kept for the last few schedules
        (keyed by identity: a `Schedule` is immutable, and the entry holds it alive)."""
        index = cls._cache.get(id(schedule))
        if index is None or index.schedule is not schedule:
            index = cls(schedule)
            if len(cls._cache) >= cls._cache_size:
                cls._cache.pop(next(iter(cls._cache)))
            cls._cache[id(schedule)] = index
        return index

    def next_use(self, after: int) -> UseInterval | None:
        return self.uses[after + 1] if after + 1 < len(self.uses) else None

    def next_use_of(self, component: str, after: int) -> UseInterval | None:
        table = self._next_of.get(component)
        return table[after + 1] if table is not None and after + 1 < len(table) else None

    def visit_table(self, component: str, groups: Sequence[Sequence[str]],
                    depth: int) -> VisitTable:
        """Visits of `component` when its streamed blocks form `groups` (lists of unit names)
        and `depth` groups are kept in flight ahead of the one computing."""
        key = (component, tuple(tuple(g) for g in groups), depth)
        table = self._visits.pop(key, None)
        if table is None:
            table = self._build_visits(component, groups, depth)
            if len(self._visits) >= self.max_visit_tables:
                self._visits.pop(next(iter(self._visits)))  # the least recently used
        self._visits[key] = table
        return table

    def _build_visits(self, component: str, groups: Sequence[Sequence[str]],
                      depth: int) -> VisitTable:
        group_of = {name: k for k, grp in enumerate(groups) for name in grp}
        if self._own_calls is None:
            calls = self.schedule.calls
            self._own_calls = {u.index: [(c.index, c.unit) for c in calls[u.first:u.last + 1]
                                         if c.component == u.component] for u in self.uses}
        by_use: dict[int, tuple[int, ...]] = {}
        starts: dict[int, tuple[int, tuple[int, ...], int]] = {}
        done: dict[int, int] = {}
        for use in self.uses:
            if use.component != component:
                continue
            visits: list[int] = []
            first: list[int] = []
            last: list[int] = []
            for index, unit in self._own_calls[use.index]:
                k = group_of.get(unit)
                if k is None:
                    continue
                if not visits or visits[-1] != k:
                    visits.append(k)
                    first.append(index)
                    last.append(index)
                last[-1] = index
            seq = by_use[use.index] = tuple(visits)
            for v, k in enumerate(seq):
                beyond = v + 1 + depth - len(seq)
                starts[first[v]] = (k, seq[v + 1:v + 1 + depth], beyond if depth > 0 else 0)
                done[last[v]] = k
        return VisitTable(by_use, starts, done)
