"""Requests, stages and the pipeline that runs a zoo model end to end.

(The Request dataclass is defined first; stages and the pipeline follow.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from resbench.errors import InputError
from resbench.models.base import ModelSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One generation request. Frames is 1 for image models."""

    height: int
    width: int
    frames: int = 1
    steps: int
    guidance: float
    cfg: bool = True
    cfg_mode: Literal["sequential", "batched"] = "sequential"
    batch: int = 1
    seed: int = 0

    @classmethod
    def for_model(cls, spec: ModelSpec, **overrides: object) -> Request:
        """The model's default request with `overrides` (None values are ignored)."""
        d = spec.defaults
        base = cls(height=d.height, width=d.width, frames=d.frames, steps=d.steps,
                   guidance=d.guidance, cfg=d.cfg, cfg_mode=d.cfg_mode)
        request = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        validate_request(spec, request)
        return request

    @property
    def passes_per_step(self) -> int:
        """Denoiser calls per step: 2 with sequential CFG, else 1."""
        return 2 if self.cfg and self.cfg_mode == "sequential" else 1


def validate_request(spec: ModelSpec, request: Request) -> None:
    """Raise `InputError` stating the rule a request breaks for this model."""
    for name in ("height", "width", "frames", "steps", "batch"):
        value = getattr(request, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"request {name} must be a positive integer, got {value!r}")
    if request.cfg_mode not in ("sequential", "batched"):
        raise InputError(f"request cfg_mode must be 'sequential' or 'batched', got {request.cfg_mode!r}")
    if not spec.is_video and request.frames != 1:
        raise InputError(f"{spec.name} makes images: frames must be 1, got {request.frames}")
    if spec.validate is not None:
        spec.validate(request)
