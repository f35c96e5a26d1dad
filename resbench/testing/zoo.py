"""Checks every zoo model must pass; family tests call them with their own specs.

* `check_full_size_on_meta`: each component builds at full size on the meta device (no
  weight storage), its parameter count is within `rel_tol` of the published one, and its
  residency units partition the parameters.
* `run_tiny`: each component, materialised at a small scale on CPU in float32, runs its
  entry point on a small request with the right shapes and finite outputs; then the whole
  `Pipeline` runs one step of that request on the same modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resbench.models.base import (
    REST,
    ModelSpec,
    build_component,
    count_params,
    materialize,
    unit_infos,
)
from resbench.pipeline import Pipeline, Request


def check_full_size_on_meta(spec: ModelSpec, rel_tol: float = 0.02) -> dict[str, int]:
    """Assert the contract at full size; return the parameter count of every component."""
    counts = {}
    for comp in spec.components:
        module = build_component(comp, 1.0)
        tensors = [*module.parameters(), *module.buffers()]
        assert all(t.is_meta for t in tensors), f"{spec.name}/{comp.name} allocated storage"
        assert all(p.dtype == comp.dtype for p in module.parameters())
        n = count_params(module)
        if comp.published_params is not None:
            err = abs(n - comp.published_params) / comp.published_params
            assert err <= rel_tol, f"{comp.name}: {n:,} vs published {comp.published_params:,}"
        units = unit_infos(comp.name, module)
        assert units[-1].name == REST
        assert sum(u.params for u in units) == n, f"{comp.name}: units do not partition params"
        assert len(units) >= 9, f"{comp.name}: only {len(units) - 1} block units"
        counts[comp.name] = n
    return counts


@dataclass(frozen=True, slots=True)
class TinyRun:
    text: dict[str, torch.Tensor]
    latents: torch.Tensor
    velocity: dict[str, torch.Tensor]
    pixels: torch.Tensor
    encoded: torch.Tensor


def tiny_modules(spec: ModelSpec, scale: float = 0.05) -> dict[str, nn.Module]:
    modules = {}
    for comp in spec.components:
        module = materialize(build_component(comp, scale), "cpu", seed=0)
        modules[comp.name] = module.float()  # CPU float32: fast and exact enough for shapes
    return modules


@torch.no_grad()
def run_tiny(
    spec: ModelSpec,
    *,
    height: int,
    width: int,
    frames: int = 1,
    scale: float = 0.05,
    pipeline: bool = True,
) -> TinyRun:
    """Run every component once at `scale` on CPU and check shapes and finiteness; with
    `pipeline`, also run one denoising step of the whole pipeline (its own prompt lengths,
    CFG mode and dtypes) on the same modules."""
    modules = tiny_modules(spec, scale)
    gen = torch.Generator().manual_seed(0)
    text = {}
    for name in spec.text_encoders:
        comp, module = spec.component(name), modules[name]
        cfg: Any = module.cfg
        vocab = min(comp.vocab_size, cfg.vocab)
        ids = torch.randint(0, vocab, (1, comp.text_len), generator=gen)
        out = module(ids)
        assert out.shape[0] == 1 and torch.isfinite(out).all(), name
        text[name] = out

    geo = spec.latent
    h, w = height // geo.vae_stride_s, width // geo.vae_stride_s
    shape = (
        (1, geo.z_channels, geo.latent_frames(frames), h, w)
        if spec.is_video
        else (1, geo.z_channels, h, w)
    )
    latents = torch.randn(shape, generator=gen)
    velocity = {}
    for name in spec.dits:
        out = modules[name](latents, torch.tensor([500.0]), text)
        assert out.shape == latents.shape and torch.isfinite(out).all(), name
        velocity[name] = out

    vae: Any = modules[spec.vae]
    pixels = vae.decode(latents)
    expected = (1, 3, frames, height, width) if spec.is_video else (1, 3, height, width)
    assert tuple(pixels.shape) == expected, (tuple(pixels.shape), expected)
    assert torch.isfinite(pixels).all()
    encoded = vae.encode(pixels)
    assert encoded.shape == latents.shape and torch.isfinite(encoded).all()

    if pipeline:
        pipe = Pipeline(spec, modules, dtype=torch.float32, scale=scale)
        request = Request.for_model(spec, height=height, width=width, frames=frames, steps=1)
        output = pipe.run(request)
        assert tuple(output.shape) == expected and torch.isfinite(output).all()
    return TinyRun(text, latents, velocity, pixels, encoded)
