"""FLUX.1-dev: 12B MMDiT (19 double-stream + 38 single-stream blocks) with CLIP-L and
T5-v1.1-XXL text encoders and a 16-channel 2-D autoencoder (BFL `src/flux/model.py`,
`modules/layers.py`, `util.py` `configs["flux-dev"]`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from resbench.models.base import (
    ComponentSpec,
    LatentGeometry,
    ModelSpec,
    ResidencyComponent,
    SamplingDefaults,
    scaled_count,
    scaled_dim,
)
from resbench.models.clip import CLIP_L14, CLIPTextEncoder
from resbench.models.flux_ae import FLUX_AE, AutoEncoder
from resbench.models.layers import FusedRMSNorm
from resbench.models.mmdit import (
    DoubleStreamBlock,
    FinalLayer,
    MLPEmbedder,
    SingleStreamBlock,
    grid_ids,
    patchify,
    rope_angles,
    scaled_axes,
    timestep_embedding,
    unpatchify,
)
from resbench.models.registry import register
from resbench.models.rules import size_and_frame_rule
from resbench.models.t5 import T5_V11_XXL, T5Encoder


@dataclass(frozen=True, slots=True)
class FluxConfig:
    in_channels: int = 64  # 16 latent channels × 2×2 packing
    out_channels: int = 64
    vec_in_dim: int = 768  # CLIP pooled
    context_in_dim: int = 4096  # T5 hidden states
    hidden: int = 3072
    mlp_ratio: float = 4.0
    heads: int = 24
    depth: int = 19
    depth_single: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: float = 10_000.0
    qkv_bias: bool = True
    guidance_embed: bool = True
    default_guidance: float = 3.5

    def scaled(self, scale: float) -> FluxConfig:
        if scale >= 1:
            return self
        heads = max(2, round(self.heads * scale))
        head_dim = scaled_dim(self.hidden // self.heads, scale**0.5, 8)
        # Text widths follow the encoders built at the same scale.
        return FluxConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            vec_in_dim=CLIP_L14.scaled(scale).dim,
            context_in_dim=T5_V11_XXL.scaled(scale).dim,
            hidden=heads * head_dim,
            mlp_ratio=self.mlp_ratio,
            heads=heads,
            depth=scaled_count(self.depth, scale),
            depth_single=scaled_count(self.depth_single, scale),
            axes_dim=scaled_axes(self.axes_dim, head_dim),
            theta=self.theta,
            qkv_bias=self.qkv_bias,
            guidance_embed=self.guidance_embed,
            default_guidance=self.default_guidance,
        )


FLUX_DEV = FluxConfig()


class Flux(ResidencyComponent):
    """The FLUX.1 transformer.

    Numerics are diffusers' `FluxTransformer2DModel`'s (bf16 throughout, LayerNorm and
    modulation in bf16, RoPE products in float32); q/k RMSNorm is `torch.nn.RMSNorm`'s fused
    kernel as there. The op-by-op float32 `RMSNorm` makes about eight passes over q and k per
    block instead of one: ~90 GB of extra traffic in a 1024² forward, the main difference
    found from diffusers (benchmarks/zoo_vs_diffusers.py measures both).

    ``forward(x, t, cond)``: `x` latents [B, 16, H/8, W/8], packed into 2×2 tokens inside;
    `t` [B] in [0, 1000]; ``cond["text_encoder_2"]`` T5 states [B, L, 4096],
    ``cond["text_encoder"]`` CLIP pooled [B, 768], optional ``cond["guidance"]`` (scale).
    Returns the velocity with the shape of `x`.
    """

    block_attrs = ("double_blocks", "single_blocks")

    def __init__(self, cfg: FluxConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mlp_hidden = int(cfg.hidden * cfg.mlp_ratio)
        self.img_in = nn.Linear(cfg.in_channels, cfg.hidden)
        self.time_in = MLPEmbedder(256, cfg.hidden)
        self.vector_in = MLPEmbedder(cfg.vec_in_dim, cfg.hidden)
        self.guidance_in = MLPEmbedder(256, cfg.hidden) if cfg.guidance_embed else None
        self.txt_in = nn.Linear(cfg.context_in_dim, cfg.hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(cfg.hidden, cfg.heads, mlp_hidden, cfg.qkv_bias, FusedRMSNorm)
            for _ in range(cfg.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(cfg.hidden, cfg.heads, mlp_hidden, FusedRMSNorm)
            for _ in range(cfg.depth_single)
        )
        self.final_layer = FinalLayer(cfg.hidden, cfg.out_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        dtype = self.img_in.weight.dtype
        b, _, h, w = x.shape
        img = self.img_in(patchify(x.to(dtype), 1, 2))
        txt = self.txt_in(cond["text_encoder_2"].to(dtype))
        vec = self.time_in(timestep_embedding(t.to(x.device)))
        if self.guidance_in is not None:
            g = cond.get("guidance")
            g = torch.full((b,), self.cfg.default_guidance) if g is None else torch.as_tensor(g)
            vec = vec + self.guidance_in(timestep_embedding(g.to(x.device).reshape(-1) * 1000))
        vec = vec + self.vector_in(cond["text_encoder"])

        img_angles = rope_angles(
            grid_ids(1, h // 2, w // 2, x.device), self.cfg.axes_dim, self.cfg.theta
        )
        for block in self.double_blocks:
            # Text tokens sit at position 0 on every axis: their rotation is the identity.
            img, txt = block(img, txt, vec, img_angles)
        n_txt = txt.shape[1]
        angles = torch.cat([img_angles.new_zeros(n_txt, img_angles.shape[1]), img_angles])
        joint = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            joint = block(joint, vec, angles)
        out = self.final_layer(joint[:, n_txt:], vec)
        return unpatchify(out, x.shape, 1, 2).to(x.dtype)


def _clip(scale: float) -> nn.Module:
    return CLIPTextEncoder(CLIP_L14.scaled(scale))


def _t5(scale: float) -> nn.Module:
    return T5Encoder(T5_V11_XXL.scaled(scale))


def _transformer(scale: float) -> nn.Module:
    return Flux(FLUX_DEV.scaled(scale))


def _ae(scale: float) -> nn.Module:
    return AutoEncoder(FLUX_AE.scaled(scale))


FLUX_DEV_SPEC = register(
    ModelSpec(
        name="flux.1-dev",
        family="flux",
        description="FLUX.1-dev text-to-image: 12B guidance-distilled MMDiT, CLIP-L + T5-XXL",
        components=(
            ComponentSpec(
                "text_encoder",
                "text_encoder",
                _clip,
                123_060_480,
                "CLIP ViT-L/14 text encoder (pooled output)",
                text_len=77,
                vocab_size=CLIP_L14.vocab,
            ),
            ComponentSpec(
                "text_encoder_2",
                "text_encoder",
                _t5,
                4_762_310_656,
                "T5-v1.1-XXL encoder",
                text_len=512,
                vocab_size=T5_V11_XXL.vocab,
            ),
            ComponentSpec(
                "transformer",
                "dit",
                _transformer,
                11_901_408_320,
                "FLUX.1-dev MMDiT: 19 double + 38 single blocks, 3072 wide",
            ),
            ComponentSpec("vae", "vae", _ae, 83_819_683, "FLUX autoencoder (16 latent channels)"),
        ),
        text_encoders=("text_encoder", "text_encoder_2"),
        dits=("transformer",),
        vae="vae",
        latent=LatentGeometry(z_channels=16, vae_stride_t=1, vae_stride_s=8, patch_t=1, patch_s=2),
        defaults=SamplingDefaults(
            height=1024, width=1024, frames=1, steps=28, guidance=3.5, shift=3.0, cfg=False
        ),
        aliases=("flux",),
        is_video=False,
        validate=size_and_frame_rule("flux.1-dev", size_multiple=16),
        notes=(
            "Guidance is distilled into the transformer (an embedded scale): one pass per step.",
            "Shift 3.0 is a fixed stand-in: diffusers uses a dynamic mu, linear from 0.5 at "
            "256 image tokens to 1.15 at 4096 (exp(1.15) ≈ 3.16 at 1024×1024).",
            "Defaults are diffusers' (1024×1024, 28 steps, guidance 3.5); the BFL CLI uses "
            "1360×768, 50 steps, guidance 2.5.",
        ),
    )
)
