"""Residency strategies: one small class per way a component's weights can live.

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
and ``request_end()``. A `resident` strategy is placed at setup and has no lifecycle: the
manager never prefetches, keeps or releases it. Strategies talk to the device only through
the manager's helpers (`ctx.load`, `ctx.wait`, `ctx.drop`, ...), so every action is traced
the same way on every device.

Each class declares its frozen ``Config``; `STRATEGIES` maps the TOML name to the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from resbench.devices.base import Transfer, UnitKey
from resbench.models.base import REST, UnitInfo
from resbench.schedule import UnitCall

if TYPE_CHECKING:
    from resbench.residency.index import UseInterval
    from resbench.residency.manager import ResidencyManager


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyConfig:
    """Base of strategy configs; `name` is the TOML `strategy` value."""

    name: ClassVar[str] = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResidentConfig(StrategyConfig):
    """Loaded once before the first request, never released."""

    name: ClassVar[str] = "resident"


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadConfig(StrategyConfig):
    """Whole component on the host, copied in for each use."""

    name: ClassVar[str] = "offload"
    prefetch: bool = True
    """Copy in asynchronously ahead of the use (as early as the policy allows)."""
    release: Literal["drop", "d2h"] = "drop"
    """`drop` frees the device copy (host copy authoritative); `d2h` copies it back first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerwiseConfig(StrategyConfig):
    """Blocks streamed in groups through fixed staging buffers; the rest stays for the use."""

    name: ClassVar[str] = "layerwise"
    group_size: int = 1
    """Blocks per streamed group (one copy batch, one staging slot each)."""
    prefetch_depth: int = 1
    """Groups in flight ahead of the one computing (0: load each group when reached)."""
    resident_blocks: int = 0
    """Blocks that stay on the device for the whole request (partial residency)."""
    placement: Literal["prefix", "spaced"] = "prefix"
    """Which blocks are resident: the first ones, or evenly spaced ones."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DisabledConfig(StrategyConfig):
    """Not managed: the component is placed on the device and left alone (no events)."""

    name: ClassVar[str] = "disabled"


class Strategy:
    """One component's residency; see the module docstring for the states and call order.

    Subclasses move weights in `_bring_in` and `_take_out` and leave the state to the
    methods here.
    """

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    resident: ClassVar[bool] = False
    """Placed on the device at setup and never moved again: the manager never prefetches,
    keeps or releases it, and its host copy is read once, so it is not pinned."""

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        self.component = component
        self.units = units
        self.config = config
        self.ctx = ctx
        self.total_bytes = sum(u.weight_bytes for u in units)
        self._state: Literal["idle", "active", "kept"] = "idle"

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Once, before the first request."""

    def begin_use(self) -> str:
        """The use starts now: be active. Returns how the component got ready, for the trace:
        ``kept`` (left on the device by the policy), ``prefetched`` (brought in ahead),
        ``cold`` (its copies start now; the use waits for them) or ``resident``."""
        if self._state == "idle":
            self._bring_in(prefetch=False)
            self._state = "active"
            return "cold"
        how = "kept" if self._state == "kept" else "prefetched"
        self._state = "active"
        return how

    def prefetch(self) -> None:
        """Start bringing the component in ahead of its next use (copies traced as
        prefetches); nothing to do unless idle."""
        if self._state == "idle":
            self._bring_in(prefetch=True)
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

    def request_end(self) -> None:
        """Release whatever is still on the device, except `fixed_units`."""
        if self._state != "idle":
            self.release("end")

    def head_prefetch(self, use: UseInterval, groups: int) -> int:
        """Bring in the first `groups` groups of `use`, this component's next use, while an
        earlier use still computes; return how many were issued (0: nothing to stream)."""
        return 0

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.component}, {self.config}, {self._state})"


class _InPlace(Strategy):
    """Shared by resident and disabled: placed at setup, left there to the end."""

    resident = True

    def begin_use(self) -> str:
        return "resident"

    def keep(self) -> None:
        pass

    def release(self, reason: str) -> None:
        pass

    def request_end(self) -> None:
        pass

    def fixed_units(self) -> list[UnitInfo]:
        return list(self.units)


class ResidentStrategy(_InPlace):
    Config = ResidentConfig

    def setup(self) -> None:
        transfers = [self.ctx.load((self.component, u.name), prefetch=False) for u in self.units]
        for transfer in transfers:
            self.ctx.wait(transfer)


class OffloadStrategy(Strategy):
    """The whole component moves as one batch of copies per use."""

    Config = OffloadConfig

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        super().__init__(component, units, config, ctx)
        assert isinstance(config, OffloadConfig)
        self.offload = config
        self.pending: dict[str, Transfer] = {}

    @property
    def wants_prefetch(self) -> bool:
        return self.offload.prefetch

    def _bring_in(self, *, prefetch: bool) -> None:
        for u in self.units:
            self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)

    def before_unit(self, call: UnitCall) -> None:
        transfer = self.pending.pop(call.unit, None)
        if transfer is not None:
            self.ctx.wait(transfer)
        if call.unit != REST and self.pending.get(REST) is not None:
            self.ctx.wait(self.pending.pop(REST))

    def _take_out(self, reason: str) -> None:
        for u in self.units:
            key = (self.component, u.name)
            if self.offload.release == "d2h":
                self.ctx.copy_back(key, reason)
            else:
                self.ctx.drop(key, reason)
        self.pending = {}


class LayerwiseStrategy(Strategy):
    """Blocks streamed in groups through a staging pool; the rest and the resident blocks are
    brought in with the use (the resident blocks once: they stay to the end)."""

    Config = LayerwiseConfig

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        super().__init__(component, units, config, ctx)
        assert isinstance(config, LayerwiseConfig)
        blocks = [u for u in units if u.name != REST]
        self.rest = [u for u in units if u.name == REST]
        n = len(blocks)
        r = min(config.resident_blocks, n)
        if config.placement == "spaced" and r:
            keep = {int((i + 0.5) * n / r) for i in range(r)}
        else:
            keep = set(range(r))
        self.resident_units = [b for i, b in enumerate(blocks) if i in keep]
        streamed = [b for i, b in enumerate(blocks) if i not in keep]
        g = config.group_size
        self.groups: list[list[UnitInfo]] = [streamed[i:i + g] for i in range(0, len(streamed), g)]
        self.group_keys: list[list[UnitKey]] = [[(component, u.name) for u in grp]
                                                for grp in self.groups]
        self.depth = config.prefetch_depth
        self.slot_bytes = max((u.weight_bytes for u in streamed), default=0)
        self.slots = min(len(streamed), g * (config.prefetch_depth + 1))
        self.pool = f"{component}.staging"
        self.inflight: dict[int, list[Transfer]] = {}  # group → copies not yet waited on
        self.loaded: set[int] = set()  # groups on the device (in flight or ready)
        self.pending: dict[str, Transfer] = {}  # rest and resident blocks
        self.resident_loaded = False
        self.visit_table = ctx.index.visit_table(
            component, [[u.name for u in grp] for grp in self.groups], self.depth)

    def _issue_group(self, k: int, *, prefetch: bool) -> None:
        self.inflight[k] = [self.ctx.load(key, prefetch=prefetch, pool=self.pool)
                            for key in self.group_keys[k]]
        self.loaded.add(k)

    @property
    def wants_prefetch(self) -> bool:
        return True

    def _bring_in(self, *, prefetch: bool) -> None:
        if self.slots:
            self.ctx.alloc_pool(self.pool, self.slot_bytes, self.slots)
        for u in self.rest:
            self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)
        if not self.resident_loaded:
            for u in self.resident_units:
                self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)
            self.resident_loaded = True

    def head_prefetch(self, use: UseInterval, groups: int) -> int:
        self.prefetch()
        visits = self.visit_table.by_use.get(use.index, ())
        issued = 0
        for k in visits[: min(groups, self.depth + 1)]:
            if k not in self.loaded:
                self._issue_group(k, prefetch=True)
                issued += 1
        return issued

    def before_unit(self, call: UnitCall) -> None:
        if self.pending:
            transfer = self.pending.pop(call.unit, None)
            if transfer is not None:
                self.ctx.wait(transfer)
            if call.unit != REST and REST in self.pending:
                self.ctx.wait(self.pending.pop(REST))
        start = self.visit_table.starts.get(call.index)
        if start is None:
            return  # rest, a resident block, or not a visit's first call (already waited on)
        k, ahead, handoff = start
        loaded = self.loaded
        if k not in loaded:
            self._issue_group(k, prefetch=False)
        for transfer in self.inflight.pop(k, ()):
            self.ctx.wait(transfer)
        for g in ahead:
            if g not in loaded:
                self._issue_group(g, prefetch=True)
        if handoff > 0:
            self.ctx.handoff_prefetch(self, handoff)

    def after_unit(self, call: UnitCall) -> None:
        k = self.visit_table.done.get(call.index)
        if k is not None:
            self._drop_group(k, "drop")

    def _drop_group(self, k: int, reason: str) -> None:
        for transfer in self.inflight.pop(k, ()):
            self.ctx.wait(transfer)  # a copy in flight must land before its slot is reused
        for key in self.group_keys[k]:
            self.ctx.drop(key, reason)
        self.loaded.discard(k)

    def _take_out(self, reason: str) -> None:
        for k in sorted(self.loaded):
            self._drop_group(k, reason)
        for u in self.rest:
            self.pending.pop(u.name, None)
            self.ctx.drop((self.component, u.name), reason)
        if self.slots:
            self.ctx.free_pool(self.pool)

    def request_end(self) -> None:
        """Also take the resident blocks off: they came in with this request's first use,
        and each request starts from the device as setup left it. Kept over requests, they
        would meet the next request's earlier components, a peak the one-request schedule
        (and so the simulator) never has."""
        super().request_end()
        if self.resident_loaded:
            for u in self.resident_units:
                self.pending.pop(u.name, None)
                self.ctx.drop((self.component, u.name), "end")
            self.resident_loaded = False

    def device_bytes(self) -> int:
        rest = sum(u.weight_bytes for u in self.rest)
        fixed = sum(u.weight_bytes for u in self.resident_units)
        return rest + fixed + self.slot_bytes * self.slots

    def fixed_units(self) -> list[UnitInfo]:
        return list(self.resident_units)  # partial residency: they stay to the end


class DisabledStrategy(_InPlace):
    """Not managed: placed where the pipeline puts it, with no events."""

    Config = DisabledConfig

    def setup(self) -> None:
        for u in self.units:
            self.ctx.place_unmanaged((self.component, u.name))


STRATEGIES: dict[str, type[Strategy]] = {
    cls.Config.name: cls
    for cls in (ResidentStrategy, OffloadStrategy, LayerwiseStrategy, DisabledStrategy)
}
