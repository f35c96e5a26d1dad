"""`Engine`: where the pipelines of one model come from, as the execution layer asks for them.

resbench runs a model from one of two engines:

* `diffusers` — the implementation people deploy (`diffusers.WanPipeline`, `FluxPipeline`),
  built from the configs shipped in `resbench/engines/configs` (`DiffusersEngine`);
* `zoo` — resbench's own architecture-faithful modules and its `Pipeline` (`ZooEngine`).

An engine gives the backends (`resbench.execution`) what a run of one model at one scale
needs — the schedule of a request, components with seeded random weights, GPU weights with
host copies, and the `ManagedPipeline` that runs given components — so that no backend asks
which engine it holds. Both engines name components alike (`transformer`, `vae` …), so one
plan applies to either; their schedules differ where the implementations differ (the
shipped Wan2.2 scheduler's shift moves the expert switch, for one).

`default_engine(model)` is `diffusers` for the models it implements, else `zoo`. Engines are
found by name in `ENGINES` and imported on first use (the diffusers one imports diffusers).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from resbench.engines.catalog import ENGINE_MODELS
from resbench.errors import InputError
from resbench.models.base import ModelSpec
from resbench.models.registry import in_zoo
from resbench.pipeline import ManagedPipeline, Request
from resbench.schedule import Schedule

if TYPE_CHECKING:
    from resbench.devices.cuda import Weights

ENGINES: dict[str, str] = {
    "diffusers": "resbench.engines.diffusers_engine:DiffusersEngine",
    "zoo": "resbench.engines.zoo:ZooEngine",
}
"""Engine name → where its class is (`module:Class`)."""


class Engine(ABC):
    """The pipelines of model `spec` at `scale` (`spec` is the zoo's description of the model,
    whichever engine builds it: request defaults and rules, component kinds)."""

    name: ClassVar[str] = ""

    def __init__(self, spec: ModelSpec, *, scale: float = 1.0) -> None:
        self.spec = spec
        self.scale = scale

    @abstractmethod
    def record(self, request: Request, *, dtype: torch.dtype | None = None) -> Schedule:
        """The schedule of `request`, recorded on meta. `dtype` as in `components`: unit
        bytes follow it, so it must be the dtype of the run the schedule drives."""

    def merged_refine(self, schedule: Schedule, *, dtype: torch.dtype | None = None) -> Schedule:
        """`schedule` (recorded with `dtype`, as in `record`) with a second stage that reruns a DiT with a LoRA merged (LTX-2) moved
        onto a merged copy of the DiT, so a plan can choose how that copy lives; unchanged
        for models without one. For the simulator only: real runs follow `record`."""
        return schedule

    @abstractmethod
    def components(self, device: torch.device | str, *, dtype: torch.dtype | None = None,
                   seed: int = 0) -> dict[str, nn.Module]:
        """Every component with random weights drawn from `seed`, on `device`. `dtype`: all
        of them in it (fp32 for the CPU device); None: each in its deployment dtype."""

    @abstractmethod
    def pipeline(self, components: Mapping[str, nn.Module], *, device: torch.device | str,
                 dtype: torch.dtype | None = None) -> ManagedPipeline:
        """The pipeline running `components` (this engine's, placed on `device` or bound to
        placeholders there). `dtype`: of the tensors the pipeline makes itself, where the
        engine lets the caller choose (None: the engine's default)."""

    @abstractmethod
    def cuda_weights(self, *, seed: int = 0) -> Weights:
        """Every component bound to 0-size CUDA placeholders, with a pinned host copy of each
        residency unit (`resbench.devices.cuda.Weights`); one component on the GPU at a
        time while they are made."""


def default_engine(model: str | ModelSpec) -> str:
    """`diffusers` for the models the diffusers engine implements, else `zoo`."""
    if isinstance(model, str):
        from resbench.models.registry import get_model

        model = get_model(model)
    return "diffusers" if model.name in ENGINE_MODELS else "zoo"


def resolve_engine(name: str | None, spec: ModelSpec) -> str:
    """`name`, checked (None: `default_engine(spec)`)."""
    if name is None:
        return default_engine(spec)
    if name not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")
    if name == "zoo" and not in_zoo(spec.name):
        raise InputError(f"the zoo has no modules for {spec.name}; use --engine diffusers")
    return name


def make_engine(name: str | None, spec: ModelSpec, *, scale: float = 1.0) -> Engine:
    """The engine `name` (None: the model's default) for `spec` at `scale`; `InputError`
    when that engine does not implement the model."""
    module, cls = ENGINES[resolve_engine(name, spec)].split(":")
    engine: Engine = getattr(importlib.import_module(module), cls)(spec, scale=scale)
    return engine
