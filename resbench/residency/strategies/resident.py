"""`resident` (loaded once at setup, never released) and the in-place base it shares with
`disabled`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resbench.models.base import UnitInfo
from resbench.residency.strategies.base import Strategy, StrategyConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ResidentConfig(StrategyConfig):
    """Loaded once before the first request, never released. A component the schedule
    merges an adapter into is merged then too: the merged copy stays resident."""

    name: ClassVar[str] = "resident"


class InPlace(Strategy):
    """Shared by resident and disabled: placed at setup, left there to the end (merged
    adapters included: they stay merged across requests, as in the unmanaged run)."""

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


class ResidentStrategy(InPlace):
    Config = ResidentConfig

    def setup(self) -> None:
        transfers = [self.ctx.load((self.component, u.name), prefetch=False) for u in self.units]
        for transfer in transfers:
            self.ctx.wait(transfer)
        for m in self.merges:
            self.merge(m, reason="setup")
