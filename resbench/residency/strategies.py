"""Residency strategies: one small class per way a component's weights can live.

A strategy owns one component. The manager calls, in order for each use of it:

``prepare(cold)``     bring it in ahead of (``cold=False``, a prefetch) or at its use
``before_unit(call)`` make sure the unit about to run is on the device (wait for its copy)
``after_unit(call)``  drop what is no longer needed (layerwise groups)
``release(reason)``   take it off the device after the use (unless the policy keeps it)
``head_prefetch(n)``  start bringing in the first `n` groups of its next use early (streams
                      across component boundaries: Wan2.2's expert switch)

plus ``setup()`` once before the first request and ``request_end()``. Strategies talk to
the device only through the manager's helpers (`ctx.load`, `ctx.wait`, `ctx.drop`, ...), so
every action is traced the same way on every device.

Each class declares its frozen ``Config``; `STRATEGIES` maps the TOML name to the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from resbench.devices.base import Transfer, UnitKey
from resbench.models.base import REST, UnitInfo
from resbench.schedule import UnitCall

if TYPE_CHECKING:
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
    """Base class; see the module docstring for the call order."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    managed: ClassVar[bool] = True
    prefetchable: ClassVar[bool] = False

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        self.component = component
        self.units = units
        self.config = config
        self.ctx = ctx
        self.total_bytes = sum(u.weight_bytes for u in units)
        self.active = False  # between prepare and release
        self.kept = False  # on the device after a use, by the policy's choice
        self.use: Any = None  # the manager's UseInterval this component is in or readied for

    def setup(self) -> None:
        pass

    def prepare(self, cold: bool) -> None:
        self.active = True

    def before_unit(self, call: UnitCall) -> None:
        pass

    def after_unit(self, call: UnitCall) -> None:
        pass

    def release(self, reason: str) -> None:
        self.active = False
        self.kept = False

    def head_prefetch(self, groups: int) -> int:
        """Prefetch the first `groups` groups of the next use; return how many were issued."""
        return 0

    def request_end(self) -> None:
        if self.active or self.kept:
            self.release("end")

    def device_bytes(self) -> int:
        """Bytes this component holds on the device while in use (for budget decisions)."""
        return self.total_bytes

    @property
    def resident(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.component}, {self.config})"


class _WholeComponent(Strategy):
    """Shared by resident and offload: every unit moves as one batch of copies."""

    def _load_all(self, *, prefetch: bool) -> None:
        self.pending: dict[str, Transfer] = {}
        for u in self.units:
            self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)

    def before_unit(self, call: UnitCall) -> None:
        transfer = self.pending.pop(call.unit, None)
        if transfer is not None:
            self.ctx.wait(transfer)
        if call.unit != REST and self.pending.get(REST) is not None:
            self.ctx.wait(self.pending.pop(REST))


class ResidentStrategy(_WholeComponent):
    Config = ResidentConfig

    def setup(self) -> None:
        self._load_all(prefetch=False)
        for transfer in self.pending.values():
            self.ctx.wait(transfer)
        self.pending = {}
        self.active = True

    def prepare(self, cold: bool) -> None:
        self.active = True

    def release(self, reason: str) -> None:
        pass  # never leaves

    def request_end(self) -> None:
        pass

    @property
    def resident(self) -> bool:
        return True


class OffloadStrategy(_WholeComponent):
    Config = OffloadConfig
    prefetchable = True

    def prepare(self, cold: bool) -> None:
        if self.active or self.kept:
            self.active = True
            return
        self._load_all(prefetch=not cold)
        self.active = True

    def release(self, reason: str) -> None:
        cfg = self.config
        assert isinstance(cfg, OffloadConfig)
        for u in self.units:
            key = (self.component, u.name)
            if cfg.release == "d2h":
                self.ctx.copy_back(key, reason)
            else:
                self.ctx.drop(key, reason)
        self.pending = {}
        self.active = False
        self.kept = False


class LayerwiseStrategy(Strategy):
    Config = LayerwiseConfig
    prefetchable = True

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

    def _bring_fixed(self, prefetch: bool) -> None:
        if self.slots:
            self.ctx.alloc_pool(self.pool, self.slot_bytes, self.slots)
        for u in self.rest:
            self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)
        if not self.resident_loaded:
            for u in self.resident_units:
                self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)
            self.resident_loaded = True

    def prepare(self, cold: bool) -> None:
        if self.active:
            return
        self._bring_fixed(prefetch=not cold)
        self.active = True

    def head_prefetch(self, groups: int) -> int:
        if not self.active:
            self.prepare(cold=False)
        visits = self.visit_table.by_use.get(self.use.index, ()) if self.use is not None else ()
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

    def release(self, reason: str) -> None:
        for k in sorted(self.loaded):
            self._drop_group(k, reason)
        for u in self.rest:
            self.pending.pop(u.name, None)
            self.ctx.drop((self.component, u.name), reason)
        if self.slots:
            self.ctx.free_pool(self.pool)
        self.active = False
        self.kept = False

    def request_end(self) -> None:
        super().request_end()
        # resident blocks stay: they are the point of partial residency

    def device_bytes(self) -> int:
        rest = sum(u.weight_bytes for u in self.rest)
        fixed = sum(u.weight_bytes for u in self.resident_units)
        return rest + fixed + self.slot_bytes * self.slots


class DisabledStrategy(Strategy):
    Config = DisabledConfig
    managed = False

    def setup(self) -> None:
        for u in self.units:
            self.ctx.place_unmanaged((self.component, u.name))
        self.active = True

    def release(self, reason: str) -> None:
        pass

    def request_end(self) -> None:
        pass

    @property
    def resident(self) -> bool:
        return True


STRATEGIES: dict[str, type[Strategy]] = {
    cls.Config.name: cls
    for cls in (ResidentStrategy, OffloadStrategy, LayerwiseStrategy, DisabledStrategy)
}
