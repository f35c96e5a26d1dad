"""The strategy contract: states, call order, and the weights-changed state.

A strategy owns one component and its lifecycle state; the manager decides *when* (from the
schedule and the policy) and calls the strategy, which decides *what* moves. The state is
one of

* ``idle``   — nothing of a use on the device (the units of `fixed_units` may be);
* ``active`` — ready for, or in, a use: brought in at the use or ahead of it;
* ``kept``   — left on the device after a use by the policy's choice, until its next use
  begins or the manager evicts it;

and changes only inside these methods, which the manager calls in this order for each use:

``prefetch()``             idle → active ahead of the use, when `wants_prefetch` and the stage
                           allow it and the component does not `holds_device_copy` already
``begin_use()``            → active at the use's first call; returns how it got there
``before_unit(call)``      make sure the unit about to run is on the device (wait for its copy)
``after_unit(call)``       drop what is no longer needed (layerwise groups)
``keep()`` or ``release(reason)``  after the use's last call, as the policy chooses
``head_prefetch(use, n)``  bring in the first `n` groups of `use` early (streams across
                           component boundaries: Wan2.2's expert switch)

plus ``setup()`` once before the first request, ``release("evict")`` under memory pressure
and ``request_end()``. Where the schedule merges an adapter into the component
(`resbench.schedule.MergeCall`), the manager calls ``merge(m)`` before the call it precedes:
the strategy merges it into the device copy, or skips it when the copy on the device
already has it (a resident merged copy, a snapshot loaded from a merged host copy).

Which adapters each copy holds is explicit: `host_adapters` (what a load brings in),
`device_adapters` (what the device copy holds) and `device_changed` (the device copy
differs from the host copy: dropping it loses the change; `snapshot` copies it back). A `resident` strategy is placed at setup and has no lifecycle: the
manager never prefetches, keeps or releases it. Strategies talk to the device only through
the manager's helpers (`ctx.load`, `ctx.wait`, `ctx.drop`, ...), so every action is traced
the same way on every device.

Each class declares its frozen ``Config``; `resbench.residency.strategies.STRATEGIES` maps
the TOML name to the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from resbench.models.base import UnitInfo
from resbench.schedule import MergeCall, UnitCall

if TYPE_CHECKING:
    from resbench.residency.index import UseInterval
    from resbench.residency.manager import ResidencyManager


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyConfig:
    """Base of strategy configs; `name` is the TOML `strategy` value."""

    name: ClassVar[str] = ""


class Strategy:
    """One component's residency; see the module docstring for the states and call order.

    Subclasses move weights in `_bring_in` and `_take_out` and leave the state to the
    methods here.
    """

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    resident: ClassVar[bool] = False
    """Placed on the device at setup and never moved again: the manager never prefetches,
    keeps or releases it, and its host copy is read once, so it is not pinned."""
    merges_on_device: ClassVar[bool] = True
    """Can hold the whole component when the schedule merges an adapter into it (layerwise
    streams blocks through staging slots: a merge would have nothing whole to change)."""

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        self.component = component
        self.units = units
        self.config = config
        self.ctx = ctx
        self.total_bytes = sum(u.weight_bytes for u in units)
        self._state: Literal["idle", "active", "kept"] = "idle"
        self.merges: list[MergeCall] = ctx.index.merges_of.get(component, [])
        """The schedule's merges into this component, in order."""
        self.host_adapters: frozenset[str] = frozenset()
        """Adapters merged into the host copy (a snapshot): what a load brings in."""
        self.device_adapters: frozenset[str] = frozenset()
        """Adapters merged into the copy on the device (empty when there is none)."""
        self._merged_once: set[str] = set()

    @property
    def device_changed(self) -> bool:
        """The device copy differs from the host copy (an adapter merged since it was
        loaded): dropping it loses the change."""
        return self.device_adapters != self.host_adapters

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Once, before the first request."""

    def begin_use(self) -> str:
        """The use starts now: be active. Returns how the component got ready, for the trace:
        ``kept`` (left on the device by the policy), ``prefetched`` (brought in ahead),
        ``cold`` (its copies start now; the use waits for them) or ``resident``."""
        if self._state == "idle":
            self._load(prefetch=False)
            return "cold"
        how = "kept" if self._state == "kept" else "prefetched"
        self._state = "active"
        return how

    def prefetch(self) -> None:
        """Start bringing the component in ahead of its next use (copies traced as
        prefetches); nothing to do unless idle."""
        if self._state == "idle":
            self._load(prefetch=True)

    def _load(self, *, prefetch: bool) -> None:
        self._bring_in(prefetch=prefetch)
        self.device_adapters = self.host_adapters
        self._state = "active"

    def keep(self) -> None:
        """End the use leaving the component on the device, by the policy's choice. It stays
        until its next use begins or `release("evict")`."""
        self._state = "kept"

    def release(self, reason: str) -> None:
        """Take the component off the device (after a use, on eviction, at the request's
        end); `reason` is traced on each unit's release."""
        self._take_out(reason)
        self._state = "idle"
        self.device_adapters = frozenset()

    def request_end(self) -> None:
        """Release whatever is still on the device, except `fixed_units`."""
        if self._state != "idle":
            self.release("end")

    def head_prefetch(self, use: UseInterval, groups: int) -> int:
        """Bring in the first `groups` groups of `use`, this component's next use, while an
        earlier use still computes; return how many were issued (0: nothing to stream)."""
        return 0

    def merge(self, merge: MergeCall, *, reason: str = "") -> None:
        """Merge `merge.adapter` into the device copy before the call it precedes, unless the
        device copy already holds it (then the skip is traced with why). The component is on
        the device: its use has begun (or `setup` brought it in)."""
        if merge.adapter in self.device_adapters:
            why = "host copy merged" if merge.adapter in self.host_adapters else "device copy merged"
            self.ctx.merge_skipped(merge, why)
            return
        self._await_copies()
        if not reason:
            reason = "re-merge" if merge.adapter in self._merged_once else "first"
        self.ctx.merge(merge, reason)
        self._merged_once.add(merge.adapter)
        self.device_adapters = self.device_adapters | {merge.adapter}

    # -- per unit call -----------------------------------------------------------------------
    def before_unit(self, call: UnitCall) -> None:
        pass

    def after_unit(self, call: UnitCall) -> None:
        pass

    # -- queries -----------------------------------------------------------------------------
    @property
    def kept(self) -> bool:
        """On the device after a use by the policy's choice: the one state eviction may undo."""
        return self._state == "kept"

    @property
    def holds_device_copy(self) -> bool:
        """On the device or on its way for the next use (resident, kept, or already brought
        in): bringing it in again would move nothing."""
        return self.resident or self._state != "idle"

    @property
    def wants_prefetch(self) -> bool:
        """Whether this strategy, as configured, brings its component in ahead of the use."""
        return False

    def device_bytes(self) -> int:
        """Bytes this component holds on the device while in use (for budget decisions)."""
        return self.total_bytes

    def fixed_units(self) -> list[UnitInfo]:
        """Units that stay on the device after the request by design (not leftovers)."""
        return []

    # -- what subclasses implement -----------------------------------------------------------
    def _bring_in(self, *, prefetch: bool) -> None:
        """Issue the copies a use needs before its first call (`prefetch`: ahead of it)."""

    def _take_out(self, reason: str) -> None:
        """Drop (or copy back) what `_bring_in` and the use's calls brought in."""

    def _await_copies(self) -> None:
        """Make compute wait for every copy of the component still in flight (before a merge
        changes all of it)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.component}, {self.config}, {self._state})"
