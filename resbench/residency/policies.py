"""Policies: how the manager decides beyond what each strategy does on its own.

* `static` — the plan decides alone: components are released after their use and the next
  use is prefetched when the previous one has released its memory.
* `dynamic` — after a use, keep the component if the free memory left still covers the
  next use plus `buffer_margin_bytes`; prefetch the next use early when it fits with the
  margin; under memory pressure evict the kept component whose next use is farthest away
  (Belady's choice — the schedule is known, so this is optimal eviction, not LRU).
* `disabled` — no hooks at all: every component is placed on the device and left there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from resbench.residency.manager import ResidencyManager, UseInterval


class Policy:
    name: ClassVar[str] = ""
    manages: ClassVar[bool] = True
    evicts: ClassVar[bool] = False

    def keep_reason(self, mgr: ResidencyManager, use: UseInterval) -> str | None:
        """Why to keep `use`'s component on the device after the use, or None to release."""
        return None

    def prefetch_early(self, mgr: ResidencyManager, nxt: UseInterval) -> bool:
        """May `nxt` be prefetched while the current use still holds its memory?"""
        return False


class StaticPolicy(Policy):
    name = "static"


class DynamicPolicy(Policy):
    name = "dynamic"
    evicts = True

    def keep_reason(self, mgr: ResidencyManager, use: UseInterval) -> str | None:
        if mgr.next_use_of(use.component, after=use.index) is None:
            return None  # never used again in this request
        nxt = mgr.next_use(after=use.index)
        need = mgr.bytes_to_bring(nxt) if nxt is not None else 0
        if mgr.device.free_bytes() - need >= mgr.plan.buffer_margin_bytes:
            return "dynamic_budget"
        return None

    def prefetch_early(self, mgr: ResidencyManager, nxt: UseInterval) -> bool:
        return mgr.device.free_bytes() - mgr.bytes_to_bring(nxt) >= mgr.plan.buffer_margin_bytes


class DisabledPolicy(Policy):
    name = "disabled"
    manages = False


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (StaticPolicy, DynamicPolicy, DisabledPolicy)}
