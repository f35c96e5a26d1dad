"""Residency strategies: one small class per way a component's weights can live.

The contract (states, call order, the weights-changed state) is in `base`; each module holds
one strategy and its config. `STRATEGIES` maps the TOML `strategy` name to the class:

* `resident`  — loaded once at setup (merged adapters merged then), never released;
* `offload`   — the whole component copied in for each use, dropped (or copied back) after;
  on a merged component with `release = "drop"`: reload the base and re-merge each use;
* `snapshot`  — offload whose release copies weights changed on the device back to the host
  copy, which later loads read (a merged adapter: merged and captured once, at setup);
* `layerwise` — blocks streamed in groups through staging buffers;
* `disabled`  — left where the pipeline put it.
"""

from resbench.residency.strategies.base import Strategy, StrategyConfig
from resbench.residency.strategies.disabled import DisabledConfig, DisabledStrategy
from resbench.residency.strategies.layerwise import LayerwiseConfig, LayerwiseStrategy
from resbench.residency.strategies.offload import OffloadConfig, OffloadStrategy, WholeComponent
from resbench.residency.strategies.resident import InPlace, ResidentConfig, ResidentStrategy
from resbench.residency.strategies.snapshot import SnapshotConfig, SnapshotStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    cls.Config.name: cls
    for cls in (ResidentStrategy, OffloadStrategy, LayerwiseStrategy, DisabledStrategy,
                SnapshotStrategy)
}

__all__ = [
    "STRATEGIES", "DisabledConfig", "DisabledStrategy", "InPlace", "LayerwiseConfig",
    "LayerwiseStrategy", "OffloadConfig", "OffloadStrategy", "ResidentConfig",
    "ResidentStrategy", "SnapshotConfig", "SnapshotStrategy", "Strategy", "StrategyConfig",
    "WholeComponent",
]
