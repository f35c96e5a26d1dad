"""LoRA adapters merged into a component's weights on the device (LTX-2's distilled stage 2).

A `LoraAdapter` is the data of one adapter: for each adapted Linear (a dotted path inside the
component), its factors A (``r × in``) and B (``out × r``), and one scale. `merge_into` does
``W += scale · (B @ A)`` in place on whatever tensors the component's Linears hold now — the
device copies under the residency manager — in the weights' dtype, one Linear after another
in a fixed order, so merging the same base weights twice gives bit-identical results.
`merge_cost` gives the costs a schedule records for it (`resbench.schedule.MergeCall`), from
shapes alone; `with_merged_copy` reschedules a stage's calls of a DiT onto a merged copy.

A pipeline that merges an adapter asks its hooks first (`ensure_merged`): the residency
manager's driver answers that it merges (or finds the merge already done) itself; with no
manager the pipeline merges once and keeps the merged weights, as deployments do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from resbench.schedule import MergeCall, Schedule

if TYPE_CHECKING:
    from resbench.pipeline import PipelineHooks


@dataclass(frozen=True, slots=True)
class LoraFactor:
    """One adapted Linear: `path` inside the component, `down` A (r×in), `up` B (out×r)."""

    path: str
    down: torch.Tensor
    up: torch.Tensor


@dataclass(frozen=True, slots=True)
class MergeCost:
    """What merging an adapter costs (fields as in `resbench.schedule.MergeCall`)."""

    linears: int
    gemm_flops: int
    gemm_fp32_flops: int
    memory_bytes: int
    op_count: int
    adapter_bytes: int
    work_bytes: int


@dataclass(frozen=True, slots=True, eq=False)
class LoraAdapter:
    name: str
    factors: tuple[LoraFactor, ...]
    scale: float = 1.0

    @torch.no_grad()
    def merge_into(self, component: nn.Module) -> None:
        """``W += scale · (B @ A)`` for each adapted Linear, in place, in W's dtype."""
        for f in self.factors:
            weight = linear_weight(component, f.path)
            delta = f.up.to(weight.device, weight.dtype) @ f.down.to(weight.device, weight.dtype)
            weight.add_(delta, alpha=self.scale)

    def merge_cost(self, component: nn.Module) -> MergeCost:
        """Costs of `merge_into` on `component` (works on meta: shapes and dtypes only)."""
        for f in self.factors:
            out_f, in_f = linear_weight(component, f.path).shape
            rank = f.down.shape[0]
            if tuple(f.down.shape) != (rank, in_f) or tuple(f.up.shape) != (out_f, rank):
                raise ValueError(f"adapter {self.name}: {f.path} is {out_f}×{in_f}, factors are "
                                 f"{tuple(f.up.shape)} @ {tuple(f.down.shape)}")
        return merge_cost(component, {f.path: f.down.shape[0] for f in self.factors})


def merge_cost(component: nn.Module, ranks: Mapping[str, int]) -> MergeCost:
    """Costs of merging a LoRA of rank `ranks[path]` into each Linear at `path` of `component`,
    from shapes and dtypes alone (no factors: a published adapter's facts are enough)."""
    gemm = gemm_fp32 = memory = adapter = work = 0
    for path, rank in ranks.items():
        weight = linear_weight(component, path)
        out_f, in_f = weight.shape
        flops = 2 * out_f * rank * in_f
        if weight.dtype == torch.float32:
            gemm_fp32 += flops
        else:
            gemm += flops
        size = weight.element_size()
        memory += 3 * out_f * in_f * size
        adapter += rank * (in_f + out_f) * size
        work = max(work, out_f * in_f * size)
    return MergeCost(linears=len(ranks), gemm_flops=gemm, gemm_fp32_flops=gemm_fp32,
                     memory_bytes=memory, op_count=2 * len(ranks), adapter_bytes=adapter,
                     work_bytes=work)


def with_merged_copy(schedule: Schedule, component: str, stage: str, copy: str, adapter: str,
                     cost: MergeCost) -> Schedule:
    """`schedule` with the calls of `component` in `stage` made calls of `copy`, a second copy
    of its weights (same units) into which `adapter` is merged before its first call.

    This is how a pipeline that reruns its DiT with a LoRA merged (LTX-2's stage 2) is
    scheduled when the merged weights are kept apart from the base ones, as sglang keeps
    `transformer` and `transformer_2`: only then can the merged copy stay resident or be
    snapshotted while the next request's first stage still reads the base weights."""
    first = next((c.index for c in schedule.calls
                  if c.component == component and c.stage == stage), None)
    if first is None:
        raise ValueError(f"{schedule.model}: {component} is not called in stage {stage!r}")
    if copy in schedule.kinds:
        raise ValueError(f"{schedule.model} already has a component {copy!r}")
    units = [*schedule.units]
    at = max(i for i, u in enumerate(units) if u.component == component) + 1
    units[at:at] = [dataclasses.replace(u, component=copy) for u in schedule.component_units(component)]
    kinds = [*schedule.component_kinds]
    at = next(i for i, (c, _) in enumerate(kinds) if c == component) + 1
    kinds.insert(at, (copy, schedule.kinds[component]))

    def moved(c: str, s: str) -> str:
        return copy if (c, s) == (component, stage) else c

    merge = MergeCall(index=len(schedule.merges), before_call=first, component=copy,
                      adapter=adapter, stage=stage, **dataclasses.asdict(cost))
    return dataclasses.replace(
        schedule, units=tuple(units), component_kinds=tuple(kinds),
        calls=tuple(dataclasses.replace(c, component=moved(c.component, c.stage))
                    if c.component == component else c for c in schedule.calls),
        uses=tuple(dataclasses.replace(u, component=moved(u.component, u.stage))
                   for u in schedule.uses),
        merges=(*schedule.merges, merge))


def linear_weight(component: nn.Module, path: str) -> torch.Tensor:
    """The weight of the Linear at `path` inside `component`."""
    linear = component.get_submodule(path)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"{path} is a {type(linear).__name__}, not a Linear: LoRA adapts Linears")
    return linear.weight


def random_lora(name: str, component: nn.Module, paths: list[str], rank: int, *,
                scale: float = 1.0, seed: int = 0,
                dtype: torch.dtype | None = None) -> LoraAdapter:
    """A seeded random adapter on the Linears at `paths` of `component` (shapes from it, so
    `component` may be on meta); factors in `dtype` (default each weight's), on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for path in paths:
        weight = linear_weight(component, path)
        out_f, in_f = weight.shape
        kind = dtype or weight.dtype
        down = (torch.randn(rank, in_f, generator=gen) / in_f ** 0.5).to(kind)
        up = (torch.randn(out_f, rank, generator=gen) / rank ** 0.5).to(kind)
        factors.append(LoraFactor(path, down, up))
    return LoraAdapter(name, tuple(factors), scale)


def ensure_merged(hooks: PipelineHooks, component: str, module: nn.Module, adapter: LoraAdapter,
                  merged: set[tuple[str, str]]) -> None:
    """Have `adapter` merged into `component` before its next call: the hooks do it (a
    residency manager), or the pipeline does, once (`merged` remembers what it merged)."""
    if hooks.merge(component, adapter):
        return
    if (component, adapter.name) not in merged:
        adapter.merge_into(module)
        merged.add((component, adapter.name))
