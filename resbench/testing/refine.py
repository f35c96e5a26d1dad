"""A toy two-stage pipeline whose second stage reruns its DiT with a LoRA merged (LTX-2's shape).

Components (all `ResidencyComponent`s of residual MLP blocks, a few KB each): `encoder`
(text_encoder), `transformer` (dit), `REFINER` (dit: a copy of the transformer's base
weights, into which `ADAPTER` is merged before the refine stage) and `decoder` (vae).
Stages: text_encode → denoise (`steps` steps) → refine (`refine_steps` steps) → decode.

Run without a manager, the pipeline merges the adapter once and keeps the merged weights
(`resbench.adapters.ensure_merged`), as a deployment does; under the residency manager the
refiner's strategy decides how the merged copy lives (resident, snapshot, or reloaded and
re-merged). It is a `ManagedPipeline`, so the torch driver and the CPU device run it, and
`record_toy` records its schedule on meta with the recorder the zoo uses.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from resbench.adapters import LoraAdapter, ensure_merged, random_lora
from resbench.models.base import ResidencyComponent, TensorSlot, unit_infos, unit_slots
from resbench.pipeline import PipelineHooks, Request
from resbench.record import Recorder
from resbench.schedule import ComponentUse, Schedule

REFINER = "transformer_refine"
ADAPTER = "distilled-lora"
KINDS = {"encoder": "text_encoder", "transformer": "dit", REFINER: "dit", "decoder": "vae"}
STAGES = ("text_encode", "denoise", "refine", "decode")
TOKENS = 8
VOCAB = 64


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class Encoder(ResidencyComponent):
    block_attrs = ("blocks",)

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)
        return h


class DiT(ResidencyComponent):
    block_attrs = ("blocks",)

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.time = nn.Linear(1, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = x + self.time(t[:, None, None].to(x.dtype) / 1000) + cond
        for block in self.blocks:
            h = block(h)
        return self.out(h)


class Decoder(ResidencyComponent):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class ToyRefinePipeline:
    """The toy pipeline (see the module doc); `device` is where it makes its own tensors."""

    def __init__(self, components: dict[str, nn.Module], adapter: LoraAdapter, *,
                 dtype: torch.dtype = torch.float32, device: str = "cpu",
                 refine_steps: int = 2) -> None:
        self.components = components
        self.adapter = adapter
        self.dtype = dtype
        self.device = device
        self.refine_steps = refine_steps
        self.merged: set[tuple[str, str]] = set()

    @classmethod
    def build(cls, *, width: int = 16, depth: int = 3, dtype: torch.dtype = torch.float32,
              device: str = "cpu", rank: int = 4, seed: int = 0) -> ToyRefinePipeline:
        """Seeded weights (shapes only on `device="meta"`); the refiner starts as a copy of
        the transformer, and the adapter covers every Linear of its blocks."""
        with torch.random.fork_rng(), torch.device(device):
            torch.manual_seed(seed)
            transformer = DiT(width, depth).to(dtype)
            components: dict[str, nn.Module] = {
                "encoder": Encoder(width, 2).to(dtype), "transformer": transformer,
                REFINER: copy.deepcopy(transformer), "decoder": Decoder(width).to(dtype)}
        paths = [name for name, m in components[REFINER].named_modules()
                 if isinstance(m, nn.Linear) and name.startswith("blocks.")]
        adapter = random_lora(ADAPTER, components[REFINER], paths, rank, scale=0.5, seed=seed)
        return cls(components, adapter, dtype=dtype, device=device)

    # -- ManagedPipeline ---------------------------------------------------------------------
    def blocks(self, component: str) -> list[tuple[str, nn.Module]]:
        module = self.components[component]
        assert isinstance(module, ResidencyComponent)
        return [(f"{path}.{i}", b) for path, bl in module.block_lists() for i, b in enumerate(bl)]

    def unit_slots(self, component: str) -> dict[str, list[TensorSlot]]:
        return unit_slots(self.components[component])

    def adapters(self) -> dict[tuple[str, str], LoraAdapter]:
        return {(REFINER, self.adapter.name): self.adapter}

    def uses(self) -> list[ComponentUse]:
        return [ComponentUse(stage, comp) for stage, comp in zip(
            STAGES, ("encoder", "transformer", REFINER, "decoder"), strict=True)]

    def call(self, name: str, hooks: PipelineHooks, *args: torch.Tensor) -> torch.Tensor:
        hooks.component_enter(name)
        out = self.components[name](*args)
        hooks.component_exit(name)
        return out

    @torch.no_grad()
    def run(self, request: Request, hooks: PipelineHooks | None = None) -> torch.Tensor:
        hooks = hooks or PipelineHooks()
        gen = torch.Generator().manual_seed(request.seed)
        decoder = self.components["decoder"]
        assert isinstance(decoder, Decoder)
        width = decoder.proj.in_features
        ids = torch.randint(0, VOCAB, (request.batch, TOKENS), generator=gen).to(self.device)
        x = torch.randn(request.batch, TOKENS, width, generator=gen).to(self.device, self.dtype)
        hooks.stage_enter("text_encode")
        cond = self.call("encoder", hooks, ids)
        hooks.stage_exit("text_encode")
        hooks.stage_enter("denoise")
        x = self._steps("transformer", hooks, x, cond, 0, request.steps, 1.0)
        hooks.stage_exit("denoise")
        hooks.stage_enter("refine")
        ensure_merged(hooks, REFINER, self.components[REFINER], self.adapter, self.merged)
        x = self._steps(REFINER, hooks, x, cond, request.steps, self.refine_steps, 0.3)
        hooks.stage_exit("refine")
        hooks.stage_enter("decode")
        out = self.call("decoder", hooks, x)
        hooks.stage_exit("decode")
        return out

    def _steps(self, name: str, hooks: PipelineHooks, x: torch.Tensor, cond: torch.Tensor,
               first: int, steps: int, top: float) -> torch.Tensor:
        sigmas = [top * (1 - i / steps) for i in range(steps + 1)]
        for i in range(steps):
            hooks.step(first + i)
            t = torch.full((x.shape[0],), sigmas[i] * 1000.0, device=self.device)
            v = self.call(name, hooks, x, t, cond)
            x = (x.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(x.dtype)
        return x


def record_toy(request: Request, **build: object) -> Schedule:
    """The toy's schedule, recorded on meta (`build`: `ToyRefinePipeline.build` options)."""
    pipe = ToyRefinePipeline.build(device="meta", **build)  # type: ignore[arg-type]
    recorder = Recorder(pipe.components, {name: kind != "vae" for name, kind in KINDS.items()})
    try:
        with recorder.flops, recorder.mem:
            pipe.run(request, hooks=recorder)
    finally:
        recorder.close()
    return Schedule(model="toy-refine", scale=1.0, request={}, units=tuple(
        u for name, m in pipe.components.items() for u in unit_infos(name, m)),
        uses=tuple(pipe.uses()), stage_order=STAGES,
        calls=tuple(c for c in recorder.calls if c is not None), state_bytes=recorder.state_bytes,
        component_kinds=tuple(KINDS.items()), merges=tuple(recorder.merges))
