"""The residency manager: runs one plan over one schedule on one device.

Drivers call it at fixed points — `setup()` once, then per request `request_start()`,
`stage_enter(stage)`, `unit_begin(call)` / `unit_end(call)` around every unit call,
`stage_exit(stage)`, `request_end()`. Everything else is derived from the schedule, which the
manager knows in full before the request starts (that is what makes lookahead and Belady
eviction possible):

* a component's *use* is the interval from its first to its last call within one stage;
* at a use's first call the component is prepared (cold, or already prefetched / kept);
* at its last call the policy keeps it or its strategy releases it, and the next use is
  prefetched when its strategy and stage allow;
* layerwise strategies stream groups ahead within a use and hand the remaining prefetch
  depth to the next use (across Wan2.2's expert switch and into the next step);
* where the schedule merges an adapter into a component (`Schedule.merges`), its strategy
  merges it on the device before the call the merge precedes, or finds it merged already.

The manager never branches on device type or strategy class: strategies and the `Device`
do the work, and every action goes through the helpers below so it is traced uniformly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resbench.devices.base import Device, Transfer, UnitKey
from resbench.residency.index import ScheduleIndex, UseInterval, use_intervals
from resbench.residency.pinning import pinned_units
from resbench.residency.plan import Plan
from resbench.residency.policies import POLICIES, Policy
from resbench.residency.strategies import STRATEGIES, Strategy
from resbench.schedule import MergeCall, Schedule, UnitCall
from resbench.trace import Tracer

__all__ = ["ResidencyManager", "UseInterval", "use_intervals"]


class ResidencyManager:
    def __init__(self, schedule: Schedule, plan: Plan, device: Device, *,
                 kinds: dict[str, str], tracer: Tracer | None = None,
                 index: ScheduleIndex | None = None) -> None:
        """`index`: the schedule's lookahead tables (default `ScheduleIndex.of(schedule)`,
        shared by every manager built on the same schedule object)."""
        self.schedule = schedule
        self.plan = plan
        self.device = device
        self.tracer = tracer or Tracer()
        self.policy: Policy = POLICIES[plan.policy]()
        plan.check_components(kinds)
        self.index = index or ScheduleIndex.of(schedule)
        self.unit_bytes: dict[UnitKey, int] = self.index.unit_bytes
        self.uses = self.index.uses
        self._begin_at = self.index.begin_at
        self._end_at = self.index.end_at
        self.strategies: dict[str, Strategy] = {}
        for comp, units in self.index.units_by_component.items():
            cfg = plan.applied_config(comp, kinds.get(comp, ""))
            self.strategies[comp] = STRATEGIES[cfg.name](comp, units, cfg, self)
        plan.check_merges(schedule.merged, kinds, source=f"plan {plan.name!r}")
        self._merges_at = self.index.merges_at
        self.apply_merge: Callable[[MergeCall], None] = lambda merge: None
        """Does a merge on real tensors (the torch driver sets it; a replay has none)."""
        self._pinned = {(u.component, u.name) for u in pinned_units(plan, schedule, kinds)}
        self._current: dict[str, UseInterval] = {}
        self._handed_off: dict[int, int] = {}  # next use → groups already handed to it
        self._ending: list[UseInterval] = []
        self._compute_start: Any = None
        self.h2d_bytes = 0
        self.d2h_bytes = 0

        self.setup_s = 0.0
        """Seconds `setup` took on the device's clock."""
        self.latency_s = 0.0
        """Seconds from `request_start` to `request_end` on the device's clock (all work done),
        of the last request."""
        self.latencies_s: list[float] = []
        """`latency_s` of every request so far, in order."""
        self.request_h2d_bytes = 0
        """Bytes copied in during the last request (`h2d_bytes` counts setup's too)."""
        self.request_d2h_bytes = 0
        self.request_busy_s: float | None = None
        """Seconds the compute stream was busy during the last request (None: the device
        does not know without a trace)."""
        self._request_start_s = 0.0
        self._request_start_figures: tuple[int, int, float | None] = (0, 0, None)

    # -- driver hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        """Register host copies (pinned as `pinned_units` says), place resident and unmanaged
        units. Sets `setup_s`, the seconds this took on the device's clock."""
        self.device.begin_setup()
        setup_start = self.device.clock_s()
        for comp, strategy in self.strategies.items():
            for u in strategy.units:
                key = (comp, u.name)
                self.device.register(key, u.weight_bytes, pinned=key in self._pinned)
        start = self.device.now()
        self.tracer.stage = "setup"
        for strategy in self.strategies.values():
            strategy.setup()
        self.tracer.event("setup", start, end=self.device.now())
        self._memory()
        self.device.end_setup()
        self.setup_s = self.device.clock_s() - setup_start

    def request_start(self) -> None:
        # One setup serves many requests (apply_plan): what a request tracks starts empty.
        self._current.clear()
        self._handed_off.clear()
        self._request_start_s = self.device.clock_s()
        self._request_start_figures = (self.h2d_bytes, self.d2h_bytes,
                                       self.device.compute_busy_s())
        self.tracer.stage = ""
        self.tracer.step = -1
        self.tracer.event("request_start", self.device.now())

    def stage_enter(self, stage: str) -> None:
        self.tracer.stage = stage
        self.tracer.event("stage_enter", self.device.now())

    def stage_exit(self, stage: str) -> None:
        self._flush_ends()
        self.tracer.event("stage_exit", self.device.now())

    def unit_begin(self, call: UnitCall) -> None:
        if self._ending:
            self._flush_ends()
        self.tracer.step = call.step
        use = self._begin_at.get(call.index)
        if use is not None and self.policy.manages:
            self._begin_use(use)
        merges = self._merges_at.get(call.index)
        if merges:
            for m in merges:
                self.strategies[m.component].merge(m)
        self.strategies[call.component].before_unit(call)
        working = self.device.working_bytes(call)
        if self.policy.evicts and working > self.device.free_bytes():
            self.ensure_free(working, reason="activations")
        self._compute_start = self.device.compute_begin(call)

    def unit_end(self, call: UnitCall) -> None:
        end = self.device.compute_end(call)
        if self.tracer.enabled:
            self.tracer.event("compute", self._compute_start, end=end, component=call.component,
                              unit=call.unit, stream="compute", flops=call.flops)
        self.strategies[call.component].after_unit(call)
        ending = self._end_at.get(call.index)
        if ending and self.policy.manages:
            # The component's rest (final norm, head) still runs after its last block call:
            # end the use when the next call begins, or the stage or request ends.
            self._ending.extend(ending)

    def _flush_ends(self) -> None:
        ending, self._ending = self._ending, []
        for use in ending:
            self._end_use(use)

    def request_end(self) -> None:
        self._flush_ends()
        self.tracer.stage = ""
        self.tracer.step = -1
        for strategy in self.strategies.values():
            strategy.request_end()
        self._memory()
        self.tracer.event("request_end", self.device.now())
        self.latency_s = self.device.clock_s() - self._request_start_s
        self.latencies_s.append(self.latency_s)
        h2d, d2h, busy = self._request_start_figures
        self.request_h2d_bytes = self.h2d_bytes - h2d
        self.request_d2h_bytes = self.d2h_bytes - d2h
        busy_now = self.device.compute_busy_s()
        self.request_busy_s = None if busy_now is None or busy is None else busy_now - busy

    # -- uses --------------------------------------------------------------------------------
    def _begin_use(self, use: UseInterval) -> None:
        self._current[use.component] = use
        reason = self.strategies[use.component].begin_use()
        self.tracer.event("prepare", self.device.now(), component=use.component, reason=reason)
        nxt = self.next_use(after=use.index)
        if nxt is not None and self.policy.prefetch_early(self, nxt):
            self._prefetch_use(nxt, early=True)

    def _end_use(self, use: UseInterval) -> None:
        s = self.strategies[use.component]
        now = self.device.now()
        if s.resident:
            self.tracer.event("keep", now, component=use.component, reason="resident")
        else:
            reason = self.policy.keep_reason(self, use)
            if reason is not None:
                s.keep()
                self.tracer.event("keep", now, component=use.component, reason=reason)
            else:
                s.release("after_use")
        nxt = self.next_use(after=use.index)
        if nxt is not None:
            self._prefetch_use(nxt, early=False)

    def _prefetch_use(self, nxt: UseInterval, *, early: bool) -> None:
        s = self.strategies[nxt.component]
        if s.holds_device_copy:
            return
        now = self.device.now()
        if not (s.wants_prefetch and nxt.allow_prefetch):
            if not early:
                why = "stage disallows" if not nxt.allow_prefetch else "prefetch off"
                self.tracer.event("prefetch_skip", now, component=nxt.component, reason=why)
            return
        if self.policy.evicts and not self.ensure_free(self.bytes_to_bring(nxt), reason="prefetch",
                                                       protect=nxt.component, best_effort=True):
            self.tracer.event("prefetch_skip", now, component=nxt.component, reason="no_memory")
            return
        s.prefetch()

    # -- lookahead queries (policies, strategies) -------------------------------------------
    def next_use(self, after: int) -> UseInterval | None:
        return self.index.next_use(after)

    def next_use_of(self, component: str, after: int) -> UseInterval | None:
        return self.index.next_use_of(component, after)

    def bytes_to_bring(self, use: UseInterval) -> int:
        s = self.strategies[use.component]
        return 0 if s.holds_device_copy else s.device_bytes()

    def handoff_prefetch(self, s: Strategy, groups: int) -> None:
        """Have the first `groups` groups of the use after `s`'s current one in flight (`s`'s
        prefetch depth reaches past the end of its use). Called again with more groups as
        `s` nears its end; each call tops up to `groups`."""
        use = self._current.get(s.component)
        if use is None:
            return
        nxt = self.next_use(after=use.index)
        if nxt is None or not nxt.allow_prefetch or self._handed_off.get(nxt.index, 0) >= groups:
            return
        self._handed_off[nxt.index] = groups
        target = self.strategies[nxt.component]
        if target.resident or target.kept:
            return
        if target is s and self.policy.keep_reason(self, use) is None:
            return  # released when this use ends: what came in now would be dropped unused
        target.head_prefetch(nxt, groups)

    # -- memory pressure ---------------------------------------------------------------------
    def ensure_free(self, nbytes: int, *, reason: str, protect: str = "",
                    best_effort: bool = False) -> bool:
        """Evict kept components, farthest next use first, until `nbytes` are free."""
        if self.device.free_bytes() >= nbytes:
            return True
        here = max((u.index for u in self._current.values()), default=-1)
        candidates = []
        for comp, s in self.strategies.items():
            if s.kept and comp != protect:
                nxt = self.next_use_of(comp, here)
                candidates.append((float("inf") if nxt is None else nxt.first, comp))
        for distance, comp in sorted(candidates, reverse=True):
            if self.device.free_bytes() >= nbytes:
                break
            why = "never used again" if distance == float("inf") else f"next use at call {int(distance)}"
            self.tracer.event("evict", self.device.now(), component=comp,
                              reason=f"{reason}: belady ({why})")
            self.strategies[comp].release("evict")
        return self.device.free_bytes() >= nbytes or best_effort is False

    # -- actions (strategies call these) -----------------------------------------------------
    def load(self, key: UnitKey, *, prefetch: bool, pool: str | None = None) -> Transfer:
        if pool is None and self.policy.evicts:
            self.ensure_free(self.unit_bytes[key], reason="load", protect=key[0])
        transfer = self.device.h2d(key, pool=pool)
        self.h2d_bytes += transfer.nbytes
        # The hot paths below test `enabled` themselves: a tuner's disabled tracer should not
        # pay for building the event's arguments.
        if self.tracer.enabled:
            comp, unit = key
            if prefetch:
                self.tracer.event("prefetch", transfer.start, component=comp, unit=unit,
                                  nbytes=transfer.nbytes)
            self.tracer.event("load", transfer.start, end=transfer.end, component=comp,
                              unit=unit, stream=transfer.stream, nbytes=transfer.nbytes,
                              reason="prefetch" if prefetch else "demand")
            self._memory()
        return transfer

    def wait(self, transfer: Transfer) -> None:
        at = self.device.wait(transfer)
        if self.tracer.enabled:
            comp, unit = transfer.key
            self.tracer.event("wait", at, component=comp, unit=unit, stream="compute",
                              nbytes=transfer.nbytes, stall=transfer.end)

    def drop(self, key: UnitKey, reason: str) -> None:
        self.device.drop(key)
        if self.tracer.enabled:
            self.tracer.event("release", self.device.now(), component=key[0], unit=key[1],
                              nbytes=self.unit_bytes[key], reason=reason)
            self._memory()

    def keep_unit(self, key: UnitKey, reason: str) -> None:
        """Trace that the unit's device copy stays (at a request's end) or was found there
        (a request that does not load it again)."""
        if self.tracer.enabled:
            self.tracer.event("keep", self.device.now(), component=key[0], unit=key[1],
                              nbytes=self.unit_bytes[key], reason=reason)

    def copy_back(self, key: UnitKey, reason: str) -> None:
        """Copy the unit's device copy back into its host copy, then free it (`reason`:
        `d2h`, or why a snapshot is taken)."""
        transfer = self.device.d2h(key)
        self.tracer.event("d2h", transfer.start, end=transfer.end, component=key[0], unit=key[1],
                          stream=transfer.stream, nbytes=transfer.nbytes, reason=reason)
        self.tracer.event("release", self.device.now(), component=key[0], unit=key[1],
                          nbytes=transfer.nbytes, reason=reason)
        self.d2h_bytes += transfer.nbytes
        self._memory()

    def merge(self, merge: MergeCall, reason: str) -> None:
        """Merge `merge.adapter` into the component's device copy (every unit on the device)."""
        if self.policy.evicts:
            self.ensure_free(merge.adapter_bytes + merge.work_bytes, reason="merge",
                             protect=merge.component)
        start, end = self.device.merge(merge, lambda: self.apply_merge(merge))
        self.tracer.event("merge", start, end=end, component=merge.component, unit=merge.adapter,
                          stream="compute", nbytes=merge.adapter_bytes, reason=reason,
                          flops=merge.flops)

    def merge_skipped(self, merge: MergeCall, reason: str) -> None:
        self.tracer.event("merge_skip", self.device.now(), component=merge.component,
                          unit=merge.adapter, reason=reason)

    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        if self.policy.evicts:
            self.ensure_free(slot_bytes * slots, reason="staging", protect=name.split(".")[0])
        self.device.alloc_pool(name, slot_bytes, slots)
        self._memory()

    def free_pool(self, name: str) -> None:
        self.device.free_pool(name)
        self._memory()

    def place_unmanaged(self, key: UnitKey) -> None:
        self.device.place_unmanaged(key)

    def _memory(self) -> None:
        if self.tracer.enabled:
            self.tracer.memory(self.device.now(), self.device.used_bytes(),
                               self.device.pinned_bytes())

    # -- checks ------------------------------------------------------------------------------
    def leftover_units(self) -> list[UnitKey]:
        """Units still on the device that should not be (not among their strategy's `fixed_units`)."""
        out = []
        for comp, s in self.strategies.items():
            fixed = {u.name for u in s.fixed_units()}
            for u in s.units:
                if u.name not in fixed and self.device.on_device((comp, u.name)):
                    out.append((comp, u.name))
        return out
