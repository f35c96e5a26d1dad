"""`ZooEngine`: the model built from resbench's own modules (`resbench.models`), run by the
zoo's `Pipeline`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from resbench.engines.base import Engine
from resbench.models.base import build_component, materialize
from resbench.pipeline import Pipeline, Request
from resbench.record import record_schedule
from resbench.schedule import Schedule

if TYPE_CHECKING:
    from resbench.devices.cuda import Weights


class ZooEngine(Engine):
    name = "zoo"

    def record(self, request: Request, *, dtype: torch.dtype | None = None) -> Schedule:
        return record_schedule(self.spec, request, scale=self.scale, dtype=dtype)

    def components(self, device: torch.device | str, *, dtype: torch.dtype | None = None,
                   seed: int = 0) -> dict[str, nn.Module]:
        out = {}
        for c in self.spec.components:
            module = materialize(build_component(c, self.scale), device, seed=seed)
            out[c.name] = module.to(dtype) if dtype is not None else module
        return out

    def pipeline(self, components: Mapping[str, nn.Module], *, device: torch.device | str,
                 dtype: torch.dtype | None = None) -> Pipeline:
        return Pipeline(self.spec, dict(components), device=device,
                        dtype=dtype or torch.bfloat16, scale=self.scale)

    def cuda_weights(self, *, seed: int = 0) -> Weights:
        from resbench.devices.cuda import build_weights

        return build_weights(self.spec.components, scale=self.scale, seed=seed)
