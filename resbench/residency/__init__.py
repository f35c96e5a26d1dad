"""Residency: plans, strategies, policies and the manager that applies them."""

from resbench.residency.manager import ResidencyManager, UseInterval, use_intervals
from resbench.residency.pinning import pinned_units
from resbench.residency.plan import HostOptions, Plan, load_plan, plan_from_dict
from resbench.residency.policies import POLICIES
from resbench.residency.strategies import (
    STRATEGIES,
    DisabledConfig,
    LayerwiseConfig,
    OffloadConfig,
    ResidentConfig,
    SnapshotConfig,
)

__all__ = [
    "POLICIES", "STRATEGIES", "DisabledConfig", "HostOptions", "LayerwiseConfig",
    "OffloadConfig", "Plan", "ResidencyManager", "ResidentConfig", "SnapshotConfig", "UseInterval",
    "load_plan", "pinned_units", "plan_from_dict", "use_intervals",
]
