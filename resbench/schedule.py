"""Recorded call schedules: the ordered unit calls of one request, with their cost drivers.

A `Schedule` is what the simulator replays and what the residency manager looks ahead in.
It is recorded by running the pipeline on `meta` tensors (no weights, no compute): every
call of a residency unit is one `UnitCall`, with FLOPs split by op class (counted by
`torch.utils.flop_counter`; GEMM and conv split by input dtype), the bytes read and written
by memory-bound ops, and the
peak working memory of the call. One denoising step per (denoiser, pass) is recorded and
repeated by structure, so recording a 40-step request costs as much as a 1-step one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from resbench.models.base import UnitInfo


@dataclass(frozen=True, slots=True)
class ComponentUse:
    """A stage's declared use of a component (as sglang's `ComponentUse`).

    `phase` orders uses inside one stage (Wan2.2's two experts: phase 0 high-noise, 1 low).
    `allow_prefetch`: the manager may bring it in before the stage starts.
    `keep_after_request`: prefer to keep it on the device for the next request.
    """

    stage: str
    component: str
    phase: int = 0
    allow_prefetch: bool = True
    keep_after_request: bool = False


@dataclass(frozen=True, slots=True)
class UnitCall:
    """One call of one residency unit. `step` is -1 outside the denoising loop.

    Costs: `gemm_flops` (matmuls, linear layers with bf16/fp16 inputs), `attention_flops`
    (SDPA), `conv_flops` (bf16/fp16 convolutions), `memory_bytes` (bytes read plus written by
    memory-bound ops: norms, elementwise, copies; inputs' storages plus new outputs),
    `op_count` (kernels launched), `activation_bytes` (peak bytes of tensors alive during
    the call beyond its inputs: the working memory the device must hold besides weights),
    `gemm_fp32_flops` / `conv_fp32_flops` (matmuls / convolutions with fp32 inputs: cuBLAS
    and cuDNN run them far below the bf16 tensor-core rate). The fp32 fields come last with
    defaults so hand-built calls need not name them.
    """

    index: int
    component: str
    unit: str
    stage: str
    step: int
    gemm_flops: int
    attention_flops: int
    conv_flops: int
    memory_bytes: int
    op_count: int
    activation_bytes: int
    gemm_fp32_flops: int = 0
    conv_fp32_flops: int = 0

    @property
    def flops(self) -> int:
        return (self.gemm_flops + self.attention_flops + self.conv_flops
                + self.gemm_fp32_flops + self.conv_fp32_flops)


@dataclass(frozen=True, slots=True)
class MergeCall:
    """An adapter merged into a component's device weights, before unit call `before_call`.

    Each adapted Linear gets ``W += scale · (B @ A)`` (LoRA factors A: r×in, B: out×r) in
    place, on the device copy: from then on the device copy differs from the host copy, which
    is what decides how the component can leave the device (drop and re-merge at the next
    load, copy back: `snapshot`, or stay: `resident`). Costs, per adapted Linear of shape
    out×in: the `B @ A` GEMM, ``2·out·r·in`` FLOPs (`gemm_flops`, or `gemm_fp32_flops` for
    fp32 weights); the in-place add, which reads W and the product and writes W
    (``3·out·in`` elements: `memory_bytes`); two kernels (`op_count`). `adapter_bytes` are
    the factors' bytes, read from the host for the merge; `work_bytes` is the largest
    product, the device memory the merge needs beside the weights. `index` is the merge's
    position in `Schedule.merges`.
    """

    index: int
    before_call: int
    component: str
    adapter: str
    stage: str
    linears: int
    gemm_flops: int
    memory_bytes: int
    op_count: int
    adapter_bytes: int
    work_bytes: int
    gemm_fp32_flops: int = 0

    @property
    def flops(self) -> int:
        return self.gemm_flops + self.gemm_fp32_flops


@dataclass(frozen=True, slots=True)
class Schedule:
    """Everything a replay needs: units (with weight bytes), stage uses, ordered calls.

    `stage_order` lists stages in execution order; `calls` are in execution order, so a
    call's stage is never earlier in `stage_order` than the previous call's.
    `state_bytes` is the size of the tensors carried between stages (latents, text
    embeddings) that stay on the device for the whole request.
    """

    model: str
    scale: float
    request: dict[str, object]
    units: tuple[UnitInfo, ...]
    uses: tuple[ComponentUse, ...]
    stage_order: tuple[str, ...]
    calls: tuple[UnitCall, ...]
    state_bytes: int = 0
    component_kinds: tuple[tuple[str, str], ...] = ()
    """(component, kind) pairs: text_encoder | dit | vae (plans address kinds as groups)."""
    merges: tuple[MergeCall, ...] = ()
    """Adapters merged into device weights, in order (`MergeCall`): where weights change."""

    @property
    def kinds(self) -> dict[str, str]:
        return dict(self.component_kinds)

    @property
    def merged(self) -> dict[str, tuple[str, ...]]:
        """Component → the adapters merged into it during the request, in order."""
        out: dict[str, tuple[str, ...]] = {}
        for m in self.merges:
            out[m.component] = (*out.get(m.component, ()), m.adapter)
        return out

    def unit(self, component: str, name: str) -> UnitInfo:
        for u in self.units:
            if u.component == component and u.name == name:
                return u
        raise KeyError((component, name))

    def component_units(self, component: str) -> list[UnitInfo]:
        return [u for u in self.units if u.component == component]

    def component_bytes(self, component: str) -> int:
        return sum(u.weight_bytes for u in self.units if u.component == component)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(u.component for u in self.units))

    def calls_frame(self) -> pd.DataFrame:
        """One row per call; FLOPs split by op class, bytes in columns ending `_bytes`."""
        frame = pd.DataFrame([
            {f: getattr(c, f) for f in c.__slots__} for c in self.calls
        ])
        frame["flops"] = (frame["gemm_flops"] + frame["attention_flops"] + frame["conv_flops"]
                          + frame["gemm_fp32_flops"] + frame["conv_fp32_flops"])
        return frame

    def units_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{f: getattr(u, f) for f in u.__slots__} for u in self.units])
