"""Tables describing the zoo (for `resbench models`): built on meta, nothing allocated."""

from __future__ import annotations

import pandas as pd

from resbench.models.base import build_component, count_params, unit_infos
from resbench.models.registry import get_model, listed_models


def models_frame() -> pd.DataFrame:
    """One row per model (the zoo's, then those only the diffusers engine runs): name, aliases,
    components, parameters vs published, weight GB (bf16 unless noted)."""
    rows = []
    for spec in listed_models():
        params = 0
        nbytes = 0
        checked = 0  # params of the components that have a published count
        for comp in spec.components:
            module = build_component(comp, 1.0)
            n = count_params(module)
            params += n
            checked += n if comp.published_params else 0
            nbytes += sum(u.weight_bytes for u in unit_infos(comp.name, module))
        published = spec.published_params
        rows.append({
            "model": spec.name,
            "aliases": ", ".join(spec.aliases),
            "components": ", ".join(spec.component_names),
            "params": params,
            "published_params": published or None,
            "params_err_pct": round(100 * (checked - published) / published, 3) if published else None,
            "weights_gb": round(nbytes / 1e9, 2),
        })
    return pd.DataFrame(rows)


def components_frame(name: str) -> pd.DataFrame:
    """One row per component of a model: kind, dtype, params vs published, units, bytes."""
    spec = get_model(name)
    rows = []
    for comp in spec.components:
        module = build_component(comp, 1.0)
        units = unit_infos(comp.name, module)
        n = count_params(module)
        blocks = [u for u in units if u.block_index >= 0]
        rest = units[-1]
        published = comp.published_params
        rows.append({
            "component": comp.name, "kind": comp.kind, "dtype": str(comp.dtype).removeprefix("torch."),
            "params": n, "published_params": published,
            "params_err_pct": round(100 * (n - published) / published, 3) if published else None,
            "blocks": len(blocks),
            "block_mb": round(max((u.weight_bytes for u in blocks), default=0) / 1e6, 1),
            "rest_mb": round(rest.weight_bytes / 1e6, 1),
            "weights_gb": round(sum(u.weight_bytes for u in units) / 1e9, 3),
        })
    return pd.DataFrame(rows)


def units_frame(name: str) -> pd.DataFrame:
    """Every residency unit of every component with its parameters and bytes."""
    spec = get_model(name)
    rows = []
    for comp in spec.components:
        for u in unit_infos(comp.name, build_component(comp, 1.0)):
            rows.append({"component": u.component, "unit": u.name, "params": u.params,
                         "weight_bytes": u.weight_bytes})
    return pd.DataFrame(rows)
