"""`DiffusersEngine`: the model as the diffusers pipeline people deploy, built from the
configs shipped with resbench (`resbench.engines.build`) and run by `DiffusersPipeline`."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resbench.engines.base import Engine
from resbench.engines.build import (
    assemble,
    build_component,
    build_components,
    materialize,
    pipeline_configs,
)
from resbench.engines.catalog import ENGINE_MODELS, get_engine_model
from resbench.engines.lora import with_refine_merge
from resbench.engines.pipeline import DiffusersPipeline
from resbench.engines.record import record_pipeline
from resbench.engines.units import component_units
from resbench.errors import InputError
from resbench.models.base import ModelSpec
from resbench.pipeline import Request
from resbench.schedule import Schedule

if TYPE_CHECKING:
    from resbench.devices.cuda import Weights


class DiffusersEngine(Engine):
    """`overrides`: config keys per section, over the scaled shipped configs
    (`build.pipeline_configs`; tests use tiny ones)."""

    name = "diffusers"

    def __init__(self, spec: ModelSpec, *, scale: float = 1.0,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(spec, scale=scale)
        if spec.name not in ENGINE_MODELS:
            raise InputError(f"the diffusers engine does not implement {spec.name}; it "
                             f"implements {', '.join(sorted(ENGINE_MODELS))} (use --engine zoo)")
        self.model = get_engine_model(spec.name)
        self.configs = pipeline_configs(self.model, scale=scale, overrides=overrides)

    def record(self, request: Request, *, dtype: torch.dtype | None = None) -> Schedule:
        pipe = assemble(self.model, build_components(self.model, self.configs, dtype=dtype),
                        self.configs)
        return record_pipeline(pipe, self.model, request, scale=self.scale)

    def merged_refine(self, schedule: Schedule, *, dtype: torch.dtype | None = None) -> Schedule:
        if self.model.refine is None:
            return schedule
        pipe = assemble(self.model, build_components(self.model, self.configs, dtype=dtype),
                        self.configs)
        return with_refine_merge(schedule, pipe, self.model)

    def components(self, device: torch.device | str, *, dtype: torch.dtype | None = None,
                   seed: int = 0) -> dict[str, nn.Module]:
        return build_components(self.model, self.configs, device=device, seed=seed, dtype=dtype)

    def pipeline(self, components: Mapping[str, nn.Module], *, device: torch.device | str,
                 dtype: torch.dtype | None = None) -> DiffusersPipeline:
        # diffusers makes its own tensors on the components' device, in their dtypes
        return DiffusersPipeline(self.model, assemble(self.model, components, self.configs),
                                 self.scale)

    def cuda_weights(self, *, seed: int = 0) -> Weights:
        from resbench.devices.cuda import HostWeights, Weights, capture_units, unbind

        device = torch.device("cuda", torch.cuda.current_device())
        host = HostWeights()
        out: dict[str, nn.Module] = {}
        for role in self.model.components:
            module = build_component(self.model, role.name, self.configs[role.name])
            # drawn on the card: seconds for a 14B expert, where a CPU draw takes minutes
            materialize(module, device, seed=seed, name=role.name, draw_on_device=True)
            capture_units(host, role.name,
                          {u.name: u.slots for u in component_units(role.name, module)})
            torch.cuda.synchronize(device)
            unbind(module, device)
            out[role.name] = module
            gc.collect()
            torch.cuda.empty_cache()
        return Weights(out, host, self.scale, seed)
