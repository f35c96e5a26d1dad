"""`resbench export diffusers PLAN`: the few lines of Python that apply a plan to a diffusers
pipeline.

diffusers' own calls are printed only where they say exactly what the plan says: a plan that
keeps every component resident is `pipe.to(device)`. Every other plan goes through
`resbench.apply_plan` (same pipeline object, removable); where one of diffusers' offload
modes has the same shape (every component offloaded whole and copied back; every component
streamed block by block one group ahead from pinned memory), it is named in a comment with
what differs.
"""

from __future__ import annotations

from collections.abc import Mapping

from resbench.residency.plan import Plan
from resbench.residency.strategies import (
    DisabledConfig,
    LayerwiseConfig,
    OffloadConfig,
    ResidentConfig,
    StrategyConfig,
)


def _all(configs: list[StrategyConfig], check: type | tuple[type, ...]) -> bool:
    return bool(configs) and all(isinstance(c, check) for c in configs)


def closest_diffusers_mode(plan: Plan, kinds: Mapping[str, str]) -> str | None:
    """A comment naming diffusers' mode of the same shape, and what differs; None if none."""
    configs = [plan.applied_config(c, k) for c, k in kinds.items()]
    if _all(configs, OffloadConfig):
        return ("# closest diffusers mode: pipe.enable_model_cpu_offload(device=...) - the "
                "same whole-component\n# offload, but it copies each component back (D2H) "
                "only when the next one runs, never\n# prefetches, and copies from pageable "
                "memory")
    if _all(configs, LayerwiseConfig) and all(
            c.group_size == 1 and c.prefetch_depth == 1 and c.resident_blocks == 0
            for c in configs if isinstance(c, LayerwiseConfig)) and plan.host.pinned:
        return ("# closest diffusers mode: pipe.enable_group_offload(onload_device=..., "
                "offload_type='block_level',\n# num_blocks_per_group=1, use_stream=True, "
                "record_stream=True) - one block ahead from pinned\n# copies too, but the "
                "non-block rest of each component is loaded at its forward's entry, blocking")
    return None


def diffusers_snippet(plan: Plan, kinds: Mapping[str, str], *, plan_ref: str,
                      device: str = "cuda", budget_bytes: int | None = None) -> str:
    """Python that applies `plan` to a diffusers pipeline bound to `pipe` (a model whose
    components have `kinds`). `plan_ref`: how the code names the plan (a preset name or a
    TOML path, as `apply_plan` takes it)."""
    configs = [plan.applied_config(c, k) for c, k in kinds.items()]
    if _all(configs, (ResidentConfig, DisabledConfig)):
        return (f"# every component resident: diffusers says it exactly\n"
                f"pipe.to({device!r})\n")
    budget = f", budget_bytes={budget_bytes}" if budget_bytes is not None else ""
    lines = ["import resbench", "",
             f"handle = resbench.apply_plan(pipe, {plan_ref!r}, device={device!r}{budget})",
             "# pipe(prompt=...) now runs under the plan (one request shape per apply);",
             "# handle.remove() gives the pipeline back as it was"]
    closest = closest_diffusers_mode(plan, kinds)
    if closest:
        lines += ["", closest]
    return "\n".join(lines) + "\n"
