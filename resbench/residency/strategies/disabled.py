"""`disabled`: the manager leaves the component where the pipeline put it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resbench.residency.strategies.base import StrategyConfig
from resbench.residency.strategies.resident import InPlace


@dataclass(frozen=True, slots=True, kw_only=True)
class DisabledConfig(StrategyConfig):
    """Not managed: the component is placed on the device and left alone (no events)."""

    name: ClassVar[str] = "disabled"


class DisabledStrategy(InPlace):
    """Not managed: placed where the pipeline puts it, with no events. An adapter is merged
    when the schedule first merges it, and stays merged."""

    Config = DisabledConfig

    def setup(self) -> None:
        for u in self.units:
            self.ctx.place_unmanaged((self.component, u.name))
