"""The model zoo: architecture-faithful components with random weights."""

from resbench.models.base import (
    REST,
    ComponentSpec,
    LatentGeometry,
    ModelSpec,
    ResidencyComponent,
    SamplingDefaults,
    UnitInfo,
    materialize,
    unit_infos,
    unit_slots,
)
from resbench.models.registry import all_models, get_model, register

__all__ = [
    "REST", "ComponentSpec", "LatentGeometry", "ModelSpec", "ResidencyComponent",
    "SamplingDefaults", "UnitInfo", "all_models", "get_model", "materialize", "register",
    "unit_infos", "unit_slots",
]
