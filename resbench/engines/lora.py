"""The LoRA a two-stage model merges for its second stage, as the schedule records it.

LTX-2's stage 2 reruns the DiT with the distilled LoRA merged (`RefineStage.lora`). The
engine schedules that rerun on a merged copy of the DiT, `<dit>_2` (`adapters.with_merged_copy`,
as sglang keeps `transformer` and `transformer_2`), with the merge before its first call priced
from the LoRA's published facts: its rank and target modules. Where the targets were not found
(`LoraFacts.target_modules` empty) every Linear inside the DiT's blocks is taken as adapted: an
assumption, stated in the schedule's merge (its `linears`) and in `resbench models show`.
"""

from __future__ import annotations

from torch import nn

from resbench.adapters import merge_cost, with_merged_copy
from resbench.engines.hooks import REFINE
from resbench.engines.roles import EngineModel, LoraFacts
from resbench.engines.units import blocks
from resbench.schedule import Schedule


def merged_name(dit: str) -> str:
    """The merged copy's component name."""
    return f"{dit}_2"


def adapted_linears(dit: nn.Module, facts: LoraFacts) -> list[str]:
    """Paths of the Linears `facts` adapts inside `dit`'s blocks (every one when the published
    targets are unknown), in block order."""
    out = []
    for unit, block in blocks(dit):
        for sub, module in block.named_modules():
            path = f"{unit}.{sub}"
            if isinstance(module, nn.Linear) and (
                    not facts.target_modules
                    or any(path == t or path.endswith(f".{t}") for t in facts.target_modules)):
                out.append(path)
    return out


def with_refine_merge(schedule: Schedule, pipe: object, model: EngineModel) -> Schedule:
    """`schedule` with the refine stage's DiT calls on a merged copy (unchanged for a model
    without a second stage)."""
    refine = model.refine
    if refine is None:
        return schedule
    dit = getattr(pipe, refine.dit)
    facts = refine.lora
    cost = merge_cost(dit, {path: facts.rank for path in adapted_linears(dit, facts)})
    adapter = facts.weight_name.removesuffix(".safetensors")
    return with_merged_copy(schedule, refine.dit, REFINE, merged_name(refine.dit), adapter, cost)
