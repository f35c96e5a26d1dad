"""`DiffusersPipeline`: a diffusers pipeline seen the way resbench sees a zoo `Pipeline`.

What the rest of resbench takes from a zoo `ModelSpec` and its `Pipeline`, this gives for a
real diffusers pipeline: components with kinds (`text_encoders`, `dits`, `vae`), residency
units and their tensor slots, the stages' component uses, a default request, a recorded
`Schedule`, and `run(request, hooks)`, which calls the same `PipelineHooks` callbacks the
zoo pipeline calls. It is a `resbench.pipeline.ManagedPipeline`: the torch driver hooks its
`blocks`, a device moves the tensors of its `unit_slots`.

It wraps any pipeline of an engine model: one built from the shipped configs
(`DiffusersPipeline.build`), or a user's own (`apply_plan`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resbench.adapters import LoraAdapter
from resbench.engines.build import build_pipeline, materialize
from resbench.engines.catalog import EngineModel, get_engine_model
from resbench.engines.hooks import PipelineHookBridge
from resbench.engines.record import record_pipeline, uses
from resbench.engines.run import default_request, run_pipeline
from resbench.engines.units import Unit, residency_units
from resbench.models.base import ComponentKind, TensorSlot
from resbench.pipeline import PipelineHooks, Request
from resbench.schedule import ComponentUse, Schedule

STAGES = ("text_encode", "denoise", "decode")
TWO_STAGE = ("text_encode", "denoise", "upsample", "refine", "decode")


@dataclass(eq=False)
class DiffusersPipeline:
    """An engine model and a diffusers pipeline of it (`pipe`, a real `WanPipeline` …)."""

    model: EngineModel
    pipe: Any
    scale: float = 1.0
    _units: dict[str, list[Unit]] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, name: str, *, scale: float = 1.0,
              overrides: Mapping[str, Mapping[str, Any]] | None = None,
              device: torch.device | str = "meta", seed: int = 0,
              dtype: torch.dtype | None = None) -> DiffusersPipeline:
        """Build engine model `name` (see `build_pipeline`)."""
        pipe = build_pipeline(name, scale=scale, overrides=overrides, device=device, seed=seed,
                              dtype=dtype)
        return cls(get_engine_model(name), pipe, scale)

    # -- what a ModelSpec gives ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def components(self) -> dict[str, nn.Module]:
        """Every component of the engine model, by name (a two-stage pipeline's upsampler
        included: `units()` reads these, not the diffusers pipeline's own `components`)."""
        return {r.name: getattr(self.pipe, r.name) for r in self.model.components}

    @property
    def kinds(self) -> dict[str, ComponentKind]:
        return {r.name: r.kind for r in self.model.components}

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return self.model.of_kind("text_encoder")

    @property
    def dits(self) -> tuple[str, ...]:
        return self.model.of_kind("dit")

    @property
    def vae(self) -> str:
        """The VAE of the image or video latents (`vae`; others of the kind: an audio VAE, a
        vocoder, a latent upsampler)."""
        vaes = self.model.of_kind("vae")
        return "vae" if "vae" in vaes else vaes[0]

    def default_request(self, **overrides: object) -> Request:
        return default_request(self.model, **overrides)

    # -- units ---------------------------------------------------------------------------------
    def units(self) -> dict[str, list[Unit]]:
        """Per component, its residency units: blocks in order, then `rest` (found once: the
        slots name modules and attributes, which stay valid while tensors are rebound)."""
        if self._units is None:
            self._units = residency_units(self.components)
        return self._units

    def unit_slots(self, component: str) -> dict[str, list[TensorSlot]]:
        """Unit name → (module, attribute) of its tensors, as `models.base.unit_slots`."""
        return {u.name: list(u.slots) for u in self.units()[component]}

    def blocks(self, component: str) -> list[tuple[str, nn.Module]]:
        """(unit name, module) of every block of `component`: where block hooks go."""
        return [(u.name, u.modules[0]) for u in self.units()[component] if u.block_index >= 0]

    def adapters(self) -> dict[tuple[str, str], LoraAdapter]:
        """Adapters the pipeline merges during a request (`ManagedPipeline`): none yet."""
        return {}

    def uses(self) -> list[ComponentUse]:
        """The components each stage (text encode → denoise → decode; a two-stage pipeline:
        → upsample → refine before decode) declares."""
        return uses(self.model, TWO_STAGE if self.model.refine is not None else STAGES)

    # -- running -------------------------------------------------------------------------------
    def materialize(self, device: torch.device | str = "cpu", *, seed: int = 0) -> DiffusersPipeline:
        """Give every meta-built component random weights on `device` (`build.materialize`)."""
        for name, module in self.components.items():
            materialize(module, device, seed=seed, name=name)
        return self

    def record(self, request: Request | None = None) -> Schedule:
        """The request's schedule (default request if None); the pipeline must be on meta."""
        return record_pipeline(self.pipe, self.model, request or self.default_request(),
                               scale=self.scale)

    def run(self, request: Request, hooks: PipelineHooks | None = None,
            output_type: str = "pt") -> torch.Tensor:
        """Run `request` through the pipeline's own `__call__`, calling `hooks`' stage, step
        and component callbacks as the zoo `Pipeline.run` does."""
        with PipelineHookBridge(self.pipe, self.model, hooks or PipelineHooks()) as bridge:
            return run_pipeline(self.pipe, self.model, request, output_type=output_type,
                                bridge=bridge)
