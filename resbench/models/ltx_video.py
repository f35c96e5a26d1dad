"""LTX-Video 2B (0.9.x): DiT with self-attention, cross-attention to T5 states and AdaLN-single
modulation, 128-channel latents at stride (8, 32, 32) unpatched, a T5-v1.1-XXL text encoder
and the 0.9.0 video VAE (diffusers `transformer_ltx.py`; `convert_ltx_to_diffusers.py`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
from resbench.models.layers import RMSNorm, apply_rope, attention
from resbench.models.ltx_vae import LTX_VAE_090, LTXVideoVAE
from resbench.models.mmdit import (
    GeluMLP,
    MLPEmbedder,
    grid_ids,
    layer_norm,
    patchify,
    timestep_embedding,
    unpatchify,
)
from resbench.models.registry import register
from resbench.models.rules import size_and_frame_rule
from resbench.models.t5 import T5_V11_XXL, T5Encoder


@dataclass(frozen=True, slots=True)
class LTXConfig:
    in_channels: int = 128
    out_channels: int = 128
    heads: int = 32
    head_dim: int = 64
    layers: int = 28
    caption_dim: int = 4096  # T5 states, projected to the model width
    eps: float = 1e-6
    theta: float = 10_000.0
    # RoPE coordinates: latent index × (VAE stride / fps for time) / base size, as in the pipeline.
    rope_scale: tuple[float, float, float] = (8 / 25, 32.0, 32.0)
    rope_base: tuple[float, float, float] = (20.0, 2048.0, 2048.0)

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def scaled(self, scale: float) -> LTXConfig:
        if scale >= 1:
            return self
        return LTXConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            heads=max(2, round(self.heads * scale)),
            head_dim=scaled_dim(self.head_dim, scale**0.5, 8),
            layers=scaled_count(self.layers, scale),
            caption_dim=T5_V11_XXL.scaled(scale).dim,
            eps=self.eps,
            theta=self.theta,
            rope_scale=self.rope_scale,
            rope_base=self.rope_base,
        )


LTX_2B = LTXConfig()


def ltx_rope_angles(
    cfg: LTXConfig, frames: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """Angles [L, dim/2] over the whole width (all heads): per frequency the (t, h, w) bands
    interleave; leftover pairs at the front stay unrotated."""
    ids = grid_ids(frames, height, width, device).float()
    coords = (
        ids
        * torch.tensor(cfg.rope_scale, device=device)
        / torch.tensor(cfg.rope_base, device=device)
    )
    n = cfg.dim // 6
    freqs = cfg.theta ** torch.linspace(0.0, 1.0, n, device=device) * (math.pi / 2)
    angles = ((coords[:, :, None] * 2 - 1) * freqs).transpose(1, 2).flatten(1)
    return torch.cat([angles.new_zeros(angles.shape[0], cfg.dim // 2 - 3 * n), angles], dim=1)


class LTXAttention(nn.Module):
    """Attention with biases and RMS QK-norm across all heads; RoPE on the full width."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, angles: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self.norm_q(self.to_q(x)), self.norm_k(self.to_k(context)), self.to_v(context)
        if angles is not None:
            q, k = (
                apply_rope(q[:, :, None], angles)[:, :, 0],
                apply_rope(k[:, :, None], angles)[:, :, 0],
            )
        b, lq, lk = x.shape[0], x.shape[1], context.shape[1]
        out = attention(
            q.view(b, lq, self.heads, -1),
            k.view(b, lk, self.heads, -1),
            v.view(b, lk, self.heads, -1),
        )
        return self.to_out(out)


class LTXBlock(nn.Module):
    def __init__(self, cfg: LTXConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm = RMSNorm(dim, cfg.eps, affine=False)
        self.attn1 = LTXAttention(dim, cfg.heads, cfg.eps)
        self.attn2 = LTXAttention(dim, cfg.heads, cfg.eps)
        self.ff = GeluMLP(dim, 4 * dim)
        self.scale_shift_table = nn.Parameter(torch.empty(6, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, angles: torch.Tensor
    ) -> torch.Tensor:
        ada = self.scale_shift_table[None, None] + temb.unflatten(-1, (6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(2)
        h = self.norm(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(h, h, angles)
        x = x + self.attn2(x, context)
        return x + gate_mlp * self.ff(self.norm(x) * (1 + scale_mlp) + shift_mlp)


class LTXTransformer(ResidencyComponent):
    """The LTX-Video DiT.

    ``forward(x, t, cond)``: `x` latents [B, 128, T, H/32, W/32] (one token per latent voxel);
    `t` [B] in [0, 1000]; ``cond["text_encoder"]`` T5 states [B, L, 4096].
    """

    block_attrs = ("blocks",)

    def __init__(self, cfg: LTXConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.proj_in = nn.Linear(cfg.in_channels, dim)
        self.time_embed = MLPEmbedder(256, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)  # AdaLN-single: one modulation for all blocks
        self.caption_in = nn.Linear(cfg.caption_dim, dim)
        self.caption_out = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(LTXBlock(cfg) for _ in range(cfg.layers))
        self.scale_shift_table = nn.Parameter(torch.empty(2, dim))
        self.proj_out = nn.Linear(dim, cfg.out_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        dtype = self.proj_in.weight.dtype
        _, _, frames, h, w = x.shape
        tokens = self.proj_in(patchify(x.to(dtype), 1, 1))
        emb = self.time_embed(timestep_embedding(t.to(x.device)))
        temb = self.time_proj(F.silu(emb))[:, None]
        context = self.caption_out(
            F.gelu(self.caption_in(cond["text_encoder"].to(dtype)), approximate="tanh")
        )
        angles = ltx_rope_angles(self.cfg, frames, h, w, x.device)
        for block in self.blocks:
            tokens = block(tokens, context, temb, angles)
        shift, scale = (self.scale_shift_table[None] + emb[:, None]).unbind(1)
        out = self.proj_out(layer_norm(tokens) * (1 + scale[:, None]) + shift[:, None])
        return unpatchify(out, x.shape, 1, 1).to(x.dtype)


def _t5(scale: float) -> nn.Module:
    return T5Encoder(T5_V11_XXL.scaled(scale))


def _transformer(scale: float) -> nn.Module:
    return LTXTransformer(LTX_2B.scaled(scale))


def _vae(scale: float) -> nn.Module:
    return LTXVideoVAE(LTX_VAE_090.scaled(scale))


LTX_VIDEO_SPEC = register(
    ModelSpec(
        name="ltx-video",
        family="ltx-video",
        description="LTX-Video 2B (0.9.x) text-to-video: DiT + cross-attention, T5-XXL, 1:192 VAE",
        components=(
            ComponentSpec(
                "text_encoder",
                "text_encoder",
                _t5,
                4_762_310_656,
                "T5-v1.1-XXL encoder",
                text_len=128,
                vocab_size=T5_V11_XXL.vocab,
            ),
            ComponentSpec(
                "transformer",
                "dit",
                _transformer,
                1_923_385_472,
                "LTX-Video 2B DiT: 28 blocks, 2048 wide, 32×64 heads",
            ),
            ComponentSpec(
                "vae",
                "vae",
                _vae,
                None,
                "LTX-Video 0.9.0 causal video VAE, 128 latent channels (count unverified)",
            ),
        ),
        text_encoders=("text_encoder",),
        dits=("transformer",),
        vae="vae",
        latent=LatentGeometry(
            z_channels=128, vae_stride_t=8, vae_stride_s=32, patch_t=1, patch_s=1
        ),
        defaults=SamplingDefaults(
            height=512,
            width=704,
            frames=161,
            steps=50,
            guidance=3.0,
            shift=1.0,
            cfg=True,
            cfg_mode="batched",
        ),
        validate=size_and_frame_rule("ltx-video", size_multiple=32, frame_step=8),
        notes=(
            "Defaults are diffusers LTXPipeline's: 512×704×161, 50 steps, guidance 3 with CFG "
            "batched (batch 2), 128 T5 tokens.",
            "Shift 1.0 is a stand-in: diffusers shifts sigmas by a resolution-dependent mu.",
            "VAE: 0.9.0 structure; 0.9.1's timestep-conditioned decoder is not modelled and the "
            "parameter count has no published reference.",
        ),
    )
)
