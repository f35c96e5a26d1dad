"""Model specs for the engine models the zoo has no modules for (FLUX.2-dev, LTX-2).

The rest of resbench asks a `ModelSpec` for a model's request defaults and rules, component
kinds and published counts (`resbench models`, `Request.for_model`, plan checks). For a
model only the diffusers engine implements, the spec is made here from its `EngineModel`:
each component builds as the diffusers engine builds it (on meta, from the shipped config),
published counts are the catalog's, and the request defaults are the diffusers pipeline's
`__call__` defaults (cited per model). They are registered outside the zoo
(`registry.in_zoo` is False): the zoo engine refuses them.

Registered by `resbench.models.registry` with the zoo's families; importing this module
does not import diffusers (components import it when built).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from resbench.engines.catalog import get_engine_model
from resbench.engines.roles import EngineModel
from resbench.models.base import ComponentSpec, LatentGeometry, ModelSpec, SamplingDefaults
from resbench.models.registry import register
from resbench.models.rules import size_and_frame_rule


def _builder(model: str, component: str) -> Callable[[float], nn.Module]:
    def build(scale: float) -> nn.Module:
        from resbench.engines.build import build_component, pipeline_configs

        engine_model = get_engine_model(model)
        return build_component(engine_model, component,
                               pipeline_configs(engine_model, scale=scale)[component])

    return build


def engine_spec(model: EngineModel, *, family: str, latent: LatentGeometry,
                defaults: SamplingDefaults, size_multiple: int, frame_step: int | None = None,
                aliases: tuple[str, ...] = (), notes: tuple[str, ...] = ()) -> ModelSpec:
    """The `ModelSpec` of engine model `model` (see the module doc)."""
    components = tuple(
        ComponentSpec(name=r.name, kind=r.kind, build=_builder(model.name, r.name),
                      published_params=r.published.params if r.published else None,
                      description=r.published.source if r.published else "", dtype=r.dtype,
                      text_len=r.text.length if r.text else 0)
        for r in model.components)
    vaes = model.of_kind("vae")
    return ModelSpec(
        name=model.name, family=family, description=model.description, components=components,
        text_encoders=tuple(r.name for r in model.components if r.text is not None),
        dits=model.of_kind("dit"), vae="vae" if "vae" in vaes else vaes[0], latent=latent,
        defaults=defaults, aliases=aliases, is_video=model.is_video,
        validate=size_and_frame_rule(model.name, size_multiple=size_multiple,
                                     frame_step=frame_step),
        notes=(*notes, *model.notes))


# `shift` is the zoo pipeline's static flow shift; these pipelines shift their sigmas
# dynamically (the scheduler's `use_dynamic_shifting` and the pipeline's `mu`), so it is 1.0
# (no static shift) and unused: only the zoo pipeline reads it.
SPECS: tuple[ModelSpec, ...] = (
    engine_spec(
        get_engine_model("ltx-2"), family="ltx2", aliases=("ltx2",),
        # LTX2Pipeline: VAE strides 8 (time) x 32 (space), patch 1, 128 latent channels.
        latent=LatentGeometry(z_channels=128, vae_stride_t=8, vae_stride_s=32, patch_t=1,
                              patch_s=1),
        # LTX2Pipeline.__call__ defaults (512x768, 30 steps, guidance_scale 3.0; num_frames
        # falls back to 121 without a duration head) and diffusers' LTX-2 docs (stage 1: 121
        # frames, 30 steps, guidance 3.0). CFG runs as one batch of two.
        defaults=SamplingDefaults(height=512, width=768, frames=121, steps=30, guidance=3.0,
                                  shift=1.0, cfg=True, cfg_mode="batched"),
        # check_inputs: height and width divisible by 32; frames 8k+1 (the causal VAE).
        size_multiple=32, frame_step=8,
        notes=("Defaults are diffusers' LTX2Pipeline's and its docs' two-stage example; "
               "stage 2 doubles the size (x2 latent upsampler) and runs 3 steps.",)),
    engine_spec(
        get_engine_model("flux.2-dev"), family="flux2", aliases=("flux2", "flux.2"),
        # Flux2Pipeline: VAE x8 (AutoencoderKLFlux2, 32 latent channels), 2x2 packing.
        latent=LatentGeometry(z_channels=32, vae_stride_t=1, vae_stride_s=8, patch_t=1,
                              patch_s=2),
        # Flux2Pipeline.__call__ defaults: 1024x1024 (default_sample_size 128 x 8), 50
        # steps, guidance_scale 4.0 (distilled: no CFG).
        defaults=SamplingDefaults(height=1024, width=1024, frames=1, steps=50, guidance=4.0,
                                  shift=1.0, cfg=False),
        # check_inputs: height and width divisible by vae_scale_factor x 2.
        size_multiple=16),
)

for _spec in SPECS:
    register(_spec, zoo=False)
