"""`layerwise`: blocks streamed in groups through fixed staging buffers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from resbench.devices.base import Transfer, UnitKey
from resbench.models.base import REST, UnitInfo
from resbench.residency.strategies.base import Strategy, StrategyConfig
from resbench.schedule import UnitCall

if TYPE_CHECKING:
    from resbench.residency.index import UseInterval
    from resbench.residency.manager import ResidencyManager


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
    keep_resident: bool = field(default=False, metadata={"written": "when set"})
    """Steady-state serving: the resident blocks stay on the device after the request, so the
    next request finds them there (traced as `keep`, reason `kept from the last request`,
    where a cold request loads them). They come in with the first request's first use, as
    without the option, and then hold their bytes through every later request — through
    its earlier components too (the text encoders run beside them), a peak one request
    never has: plans with the option are scored on the second of two back-to-back requests
    (`Plan.keeps_across_requests`, `resbench.execution.execute`). Nothing is kept with
    `resident_blocks = 0`; the manager never evicts kept blocks (a plan they do not fit
    beside is out of memory)."""


def split_blocks(units: list[UnitInfo],
                 config: LayerwiseConfig) -> tuple[list[UnitInfo], list[UnitInfo]]:
    """(resident blocks, streamed blocks) of a component's units (its `rest` in neither): the
    first `resident_blocks`, or as many evenly spaced ones, stay; the others stream."""
    blocks = [u for u in units if u.name != REST]
    n = len(blocks)
    r = min(config.resident_blocks, n)
    if config.placement == "spaced" and r:
        keep = {int((i + 0.5) * n / r) for i in range(r)}
    else:
        keep = set(range(r))
    return ([b for i, b in enumerate(blocks) if i in keep],
            [b for i, b in enumerate(blocks) if i not in keep])


class LayerwiseStrategy(Strategy):
    """Blocks streamed in groups through a staging pool; the rest and the resident blocks are
    brought in with the use (the resident blocks once: they stay to the end)."""

    Config = LayerwiseConfig
    merges_on_device = False

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        super().__init__(component, units, config, ctx)
        assert isinstance(config, LayerwiseConfig)
        self.rest = [u for u in units if u.name == REST]
        self.resident_units, streamed = split_blocks(units, config)
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
        self.kept_over = False  # the resident blocks stayed from the last request, not seen yet
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
        elif self.kept_over:
            for u in self.resident_units:
                self.ctx.keep_unit((self.component, u.name), "kept from the last request")
            self.kept_over = False

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
        and each request starts from the device as setup left it — unless `keep_resident`
        says to leave them for the next request. Kept over requests, they meet the next
        request's earlier components, a peak the one-request schedule never has: such a
        plan is scored on two requests in a row (`Plan.keeps_across_requests`)."""
        super().request_end()
        assert isinstance(self.config, LayerwiseConfig)
        if self.resident_loaded and self.config.keep_resident and self.resident_units:
            for u in self.resident_units:
                transfer = self.pending.pop(u.name, None)
                if transfer is not None:
                    self.ctx.wait(transfer)  # an unused block's copy lands before the request ends
                self.ctx.keep_unit((self.component, u.name), "keep_resident: for the next request")
            self.kept_over = True
            return
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
