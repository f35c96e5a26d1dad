"""`snapshot`: offload whose host copy follows weights changed on the device.

A release copies the device copy back to the host (D2H into its host copy) when it changed
since it was loaded — an adapter merged on the device — and drops it otherwise; later loads
read that copy, already merged, so the merge is not paid again (sglang #23771's snapshot).
When the schedule merges adapters into the component, the snapshot is taken once at setup,
as a deployment takes it on its first request: load, merge, copy back. Each request then
loads the merged copy (prefetched like any offloaded component) and merges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resbench.residency.strategies.base import StrategyConfig
from resbench.residency.strategies.offload import WholeComponent


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotConfig(StrategyConfig):
    """Whole component on the host; weights changed on the device are copied back on release
    and later loads read that copy."""

    name: ClassVar[str] = "snapshot"
    prefetch: bool = True
    """Copy in asynchronously ahead of the use (as early as the policy allows)."""


class SnapshotStrategy(WholeComponent):
    Config = SnapshotConfig

    @property
    def wants_prefetch(self) -> bool:
        assert isinstance(self.config, SnapshotConfig)
        return self.config.prefetch

    def setup(self) -> None:
        if not self.merges:
            return
        self.begin_use()
        for m in self.merges:
            self.merge(m, reason="snapshot")
        self.release("snapshot")

    def _copies_back(self) -> tuple[bool, str]:
        if not self.device_changed:
            return False, ""
        return True, f"snapshot: {', '.join(sorted(self.device_adapters))} merged"
