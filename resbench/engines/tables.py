"""Tables describing the diffusers engine's models (built on meta: nothing allocated).

Same columns as the zoo's `resbench.models.catalog` tables, so the two can be compared row
for row; published counts are the catalog's (`ComponentRole.published`), else the zoo
spec's (`ComponentSpec.published_params`).
"""

from __future__ import annotations

import pandas as pd

from resbench.engines.build import build_pipeline
from resbench.engines.catalog import ENGINE_MODELS, get_engine_model
from resbench.engines.units import residency_units
from resbench.models.registry import get_model


def components_frame(name: str) -> pd.DataFrame:
    """One row per component: class, kind, dtype, params vs published, units, bytes."""
    model = get_engine_model(name)
    pipe = build_pipeline(name)
    zoo = get_model(name)
    units = residency_units({r.name: getattr(pipe, r.name) for r in model.components})
    rows = []
    for role in model.components:
        comp_units = units[role.name]
        blocks = [u for u in comp_units if u.block_index >= 0]
        params = sum(u.params for u in comp_units)
        published = (role.published.params if role.published is not None
                     else zoo.component(role.name).published_params)
        rows.append({
            "model": name, "component": role.name, "class": model.component_class(role.name)[1],
            "kind": role.kind, "dtype": str(role.dtype).removeprefix("torch."),
            "params": params, "published_params": published,
            "params_err_pct": round(100 * (params - published) / published, 3) if published else None,
            "blocks": len(blocks),
            "block_mb": round(max((u.weight_bytes for u in blocks), default=0) / 1e6, 1),
            "rest_mb": round(comp_units[-1].weight_bytes / 1e6, 1),
            "weights_gb": round(sum(u.weight_bytes for u in comp_units) / 1e9, 3),
        })
    return pd.DataFrame(rows)


def units_frame(name: str) -> pd.DataFrame:
    """Every residency unit of every component with its parameters and bytes."""
    model = get_engine_model(name)
    pipe = build_pipeline(name)
    units = residency_units({r.name: getattr(pipe, r.name) for r in model.components})
    return pd.DataFrame([{"component": u.component, "unit": u.name, "params": u.params,
                          "weight_bytes": u.weight_bytes}
                         for r in model.components for u in units[r.name]])


def models_frame() -> pd.DataFrame:
    """Every engine model's components (`components_frame`), one table."""
    return pd.concat([components_frame(name) for name in ENGINE_MODELS], ignore_index=True)
