"""The Wan family: Wan2.2 T2V-A14B, I2V-A14B, TI2V-5B and Wan2.1 T2V-14B, T2V-1.3B.

Numbers from ../shared/reference/models.md §2 (configs, parameter counts, sampling defaults:
the `generate.py` / config-file values, not the READMEs' suggestions). The DiTs are bf16 (the
official code's `--convert_model_dtype`; the shipped files are fp32); the VAEs run in fp32 as
`Wan2_1_VAE` / `Wan2_2_VAE` do by default.

The Wan2.2 DiTs compute as diffusers' `WanTransformer3DModel` does (what diffusers and sglang
users run: bf16 residual stream, per-sample time embedding for A14B; `wan_dit` module doc).
`wan2.2-t2v-a14b-orig` and `wan2.2-ti2v-5b-orig` are the same models with the numerics of the
original Wan2.2 repository (fp32 residual stream and per-token fp32 time embedding, float64
RoPE). The Wan2.1 DiTs keep the original numerics.
"""

from __future__ import annotations

import torch

from resbench.models.base import ComponentSpec, LatentGeometry, ModelSpec, SamplingDefaults
from resbench.models.registry import register
from resbench.models.rules import size_and_frame_rule
from resbench.models.t5 import UMT5_XXL, T5Encoder
from resbench.models.wan_dit import (
    WAN21_1_3B,
    WAN21_14B,
    WAN22_I2V_A14B,
    WAN22_T2V_A14B,
    WAN22_T2V_A14B_ORIGINAL,
    WAN22_TI2V_5B,
    WAN22_TI2V_5B_ORIGINAL,
    WanDiT,
    WanDiTConfig,
    wan_dit,
)
from resbench.models.wan_vae import WAN21_VAE, WanVAE
from resbench.models.wan_vae22 import WAN22_VAE, WanVAE22

UMT5_PARAMS = 5_680_910_336
DIT_14B_PARAMS = 14_288_491_584
DIT_I2V_14B_PARAMS = 14_288_901_184
VAE21_PARAMS = 126_892_531
VAE22_PARAMS = 704_688_668

GEOMETRY_21 = LatentGeometry(z_channels=16, vae_stride_t=4, vae_stride_s=8, patch_t=1, patch_s=2)
GEOMETRY_22 = LatentGeometry(z_channels=48, vae_stride_t=4, vae_stride_s=16, patch_t=1, patch_s=2)

I2V_NOTE = ("I2V: cond['image_latents'] = cat(mask [B,4,T,h,w], vae.encode(first frame + "
            "zero frames, full resolution) [B,16,T,h,w]) on channels; no image encoder.")


def text_encoder() -> ComponentSpec:
    return ComponentSpec(
        name="text_encoder", kind="text_encoder", build=lambda s: T5Encoder(UMT5_XXL.scaled(s)),
        published_params=UMT5_PARAMS, description="umT5-XXL encoder", text_len=512,
        vocab_size=UMT5_XXL.vocab)


def dit(name: str, cfg: WanDiTConfig, params: int, description: str) -> ComponentSpec:
    def build(scale: float) -> WanDiT:
        return wan_dit(cfg.scaled(scale, text_dim=UMT5_XXL.scaled(scale).dim))

    return ComponentSpec(name=name, kind="dit", build=build, published_params=params,
                         description=description)


def vae21() -> ComponentSpec:
    return ComponentSpec(name="vae", kind="vae", build=lambda s: WanVAE(WAN21_VAE.scaled(s)),
                         published_params=VAE21_PARAMS, description="Wan2.1 VAE",
                         dtype=torch.float32)


def vae22() -> ComponentSpec:
    return ComponentSpec(name="vae", kind="vae", build=lambda s: WanVAE22(WAN22_VAE.scaled(s)),
                         published_params=VAE22_PARAMS, description="Wan2.2 VAE",
                         dtype=torch.float32)


def wan_model(name: str, description: str, components: tuple[ComponentSpec, ...],
              geometry: LatentGeometry, defaults: SamplingDefaults, *,
              aliases: tuple[str, ...] = (), boundary: float | None = None,
              image_conditioning: bool = False, notes: tuple[str, ...] = ()) -> ModelSpec:
    """A Wan spec; requests need frames = 4k+1 (the causal VAE encodes frame 0 alone, then 4
    frames per latent frame) and sides a multiple of VAE stride × patch (16, or 32 for TI2V)."""
    dits = tuple(c.name for c in components if c.kind == "dit")
    return ModelSpec(name=name, family="wan", description=description, components=components,
                     text_encoders=("text_encoder",), dits=dits, vae="vae", latent=geometry,
                     defaults=defaults, aliases=aliases, boundary=boundary,
                     image_conditioning=image_conditioning, validate=size_and_frame_rule(
                         name, size_multiple=geometry.vae_stride_s * geometry.patch_s,
                         frame_step=geometry.vae_stride_t),
                     notes=notes)


register(wan_model(
    "wan2.2-t2v-a14b", "Wan2.2 text-to-video, two 14B experts (high-noise, then low-noise)",
    (text_encoder(),
     dit("transformer", WAN22_T2V_A14B, DIT_14B_PARAMS, "high-noise expert"),
     dit("transformer_2", WAN22_T2V_A14B, DIT_14B_PARAMS, "low-noise expert"),
     vae21()),
    GEOMETRY_21,
    SamplingDefaults(height=720, width=1280, frames=81, steps=40, guidance=4.0, shift=12.0,
                     cfg=True),
    aliases=("wan2.2", "wan2.2-t2v"), boundary=0.875,
    notes=("guidance 4.0 is the high-noise expert's; the low-noise expert uses 3.0.",)))

register(wan_model(
    "wan2.2-t2v-a14b-orig",
    "Wan2.2 T2V-A14B with the original repository's numerics (fp32 residual stream, "
    "per-token fp32 time embedding)",
    (text_encoder(),
     dit("transformer", WAN22_T2V_A14B_ORIGINAL, DIT_14B_PARAMS, "high-noise expert"),
     dit("transformer_2", WAN22_T2V_A14B_ORIGINAL, DIT_14B_PARAMS, "low-noise expert"),
     vae21()),
    GEOMETRY_21,
    SamplingDefaults(height=720, width=1280, frames=81, steps=40, guidance=4.0, shift=12.0,
                     cfg=True),
    boundary=0.875,
    notes=("Same weights as wan2.2-t2v-a14b; the numerics of Wan-Video/Wan2.2 "
           "wan/modules/model.py rather than diffusers'.",)))

register(wan_model(
    "wan2.2-i2v-a14b", "Wan2.2 image-to-video, two 14B experts, first frame via the VAE",
    (text_encoder(),
     dit("transformer", WAN22_I2V_A14B, DIT_I2V_14B_PARAMS, "high-noise expert (36 ch in)"),
     dit("transformer_2", WAN22_I2V_A14B, DIT_I2V_14B_PARAMS, "low-noise expert (36 ch in)"),
     vae21()),
    GEOMETRY_21,
    SamplingDefaults(height=720, width=1280, frames=81, steps=40, guidance=3.5, shift=5.0,
                     cfg=True),
    aliases=("wan2.2-i2v",), boundary=0.900, image_conditioning=True, notes=(I2V_NOTE,)))

register(wan_model(
    "wan2.2-ti2v-5b", "Wan2.2 text/image-to-video 5B with the 16× Wan2.2 VAE",
    (text_encoder(), dit("transformer", WAN22_TI2V_5B, 4_999_787_712, "5B DiT"), vae22()),
    GEOMETRY_22,
    SamplingDefaults(height=704, width=1280, frames=121, steps=50, guidance=5.0, shift=5.0,
                     cfg=True),
    aliases=("wan2.2-5b", "wan2.2-ti2v")))

register(wan_model(
    "wan2.2-ti2v-5b-orig",
    "Wan2.2 TI2V-5B with the original repository's numerics (fp32 residual stream)",
    (text_encoder(), dit("transformer", WAN22_TI2V_5B_ORIGINAL, 4_999_787_712, "5B DiT"), vae22()),
    GEOMETRY_22,
    SamplingDefaults(height=704, width=1280, frames=121, steps=50, guidance=5.0, shift=5.0,
                     cfg=True),
    notes=("Same weights as wan2.2-ti2v-5b; the numerics of Wan-Video/Wan2.2 "
           "wan/modules/model.py rather than diffusers'.",)))

register(wan_model(
    "wan2.1-t2v-14b", "Wan2.1 text-to-video 14B",
    (text_encoder(), dit("transformer", WAN21_14B, DIT_14B_PARAMS, "14B DiT"), vae21()),
    GEOMETRY_21,
    SamplingDefaults(height=720, width=1280, frames=81, steps=50, guidance=5.0, shift=5.0,
                     cfg=True),
    aliases=("wan2.1-14b", "wan2.1")))

register(wan_model(
    "wan2.1-t2v-1.3b", "Wan2.1 text-to-video 1.3B",
    (text_encoder(), dit("transformer", WAN21_1_3B, 1_418_996_800, "1.3B DiT"), vae21()),
    GEOMETRY_21,
    SamplingDefaults(height=480, width=832, frames=81, steps=50, guidance=5.0, shift=5.0,
                     cfg=True),
    aliases=("wan2.1-1.3b",),
    notes=("README suggests shift 8-12 and guidance 6; the defaults are generate.py's.",)))
