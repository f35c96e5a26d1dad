"""`offload`: the whole component on the host, copied in for each use.

On a component the schedule merges an adapter into, `offload` with `release = "drop"` is
*reload the base and re-merge*: every use loads the base weights and pays the merge again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from resbench.devices.base import Transfer
from resbench.models.base import REST, UnitInfo
from resbench.residency.strategies.base import Strategy, StrategyConfig
from resbench.schedule import UnitCall

if TYPE_CHECKING:
    from resbench.residency.manager import ResidencyManager


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadConfig(StrategyConfig):
    """Whole component on the host, copied in for each use."""

    name: ClassVar[str] = "offload"
    prefetch: bool = True
    """Copy in asynchronously ahead of the use (as early as the policy allows)."""
    release: Literal["drop", "d2h"] = "drop"
    """`drop` frees the device copy (host copy authoritative); `d2h` copies it back first."""


class WholeComponent(Strategy):
    """The whole component moves as one batch of copies per use; `_copies_back` says whether
    a release copies the device copy back to the host (D2H) or drops it."""

    def __init__(self, component: str, units: list[UnitInfo], config: StrategyConfig,
                 ctx: ResidencyManager) -> None:
        super().__init__(component, units, config, ctx)
        self.pending: dict[str, Transfer] = {}

    def _bring_in(self, *, prefetch: bool) -> None:
        for u in self.units:
            self.pending[u.name] = self.ctx.load((self.component, u.name), prefetch=prefetch)

    def before_unit(self, call: UnitCall) -> None:
        transfer = self.pending.pop(call.unit, None)
        if transfer is not None:
            self.ctx.wait(transfer)
        if call.unit != REST and self.pending.get(REST) is not None:
            self.ctx.wait(self.pending.pop(REST))

    def _await_copies(self) -> None:
        pending, self.pending = self.pending, {}
        for transfer in pending.values():
            self.ctx.wait(transfer)

    def _copies_back(self) -> tuple[bool, str]:
        """(copy back?, the reason traced on the copies) for a release now."""
        return False, ""

    def _take_out(self, reason: str) -> None:
        back, why = self._copies_back()
        for u in self.units:
            key = (self.component, u.name)
            if back:
                self.ctx.copy_back(key, why)
            else:
                self.ctx.drop(key, reason)
        if back:
            self.host_adapters = self.device_adapters
        self.pending = {}


class OffloadStrategy(WholeComponent):
    Config = OffloadConfig

    @property
    def wants_prefetch(self) -> bool:
        assert isinstance(self.config, OffloadConfig)
        return self.config.prefetch

    def _copies_back(self) -> tuple[bool, str]:
        assert isinstance(self.config, OffloadConfig)
        return self.config.release == "d2h", "d2h"
