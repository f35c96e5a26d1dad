"""Wan DiT (Wan2.1 and Wan2.2): one block design for the 1.3B, 5B and 14B checkpoints.

Follows `wan/modules/model.py` of Wan-Video/Wan2.2 (and Wan2.1) module for module, so parameter
counts, FLOPs and activation sizes are those of the original:

* the residual stream ``x`` and the time embeddings are float32 (the original wraps the
  modulation arithmetic in fp32 autocast); the linear layers of attention, FFN and the text MLP
  run in the weight dtype, as the original's bf16 autocast makes them;
* with ``per_token_time`` (Wan2.2) the timestep is expanded to every token, so ``e0`` is
  ``[B, L, 6, dim]`` float32 and every block makes another tensor of that size; Wan2.1 keeps
  ``[B, 1, 6, dim]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_count, scaled_dim
from resbench.models.layers import RMSNorm, attention


@dataclass(frozen=True, slots=True, kw_only=True)
class WanDiTConfig:
    """Constructor numbers of one Wan DiT (W22 `WanModel.__init__`)."""

    dim: int
    """Hidden width; heads × 128 at full size."""
    ffn: int
    """FFN inner width (no gate)."""
    heads: int
    layers: int
    """Number of `WanBlock`s."""
    in_dim: int = 16
    """Latent channels in; 36 for I2V (16 noise + 4 mask + 16 first-frame latent)."""
    out_dim: int = 16
    text_dim: int = 4096
    """Width of the text encoder's hidden states (umT5-XXL)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    patch: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    per_token_time: bool = False
    """Wan2.2: one fp32 time embedding per token (`e0` is [B, L, 6, dim]); Wan2.1: per sample."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def scaled(self, scale: float, *, text_dim: int | None = None) -> WanDiTConfig:
        """Same structure with fewer blocks and narrower widths (exact at scale 1).

        Heads and head width each shrink by √scale, so `dim` shrinks about linearly.
        `text_dim` must match the (scaled) text encoder feeding this DiT. Latent channels
        are not scaled: they must match the VAE.
        """
        text_dim = self.text_dim if text_dim is None else text_dim
        if scale >= 1:
            return replace(self, text_dim=text_dim)
        heads = max(2, round(self.heads * scale**0.5))
        head_dim = scaled_dim(self.head_dim, scale**0.5, 8)
        return replace(self, dim=heads * head_dim, heads=heads, ffn=scaled_dim(self.ffn, scale),
                       layers=scaled_count(self.layers, scale), text_dim=text_dim)


WAN21_14B = WanDiTConfig(dim=5120, ffn=13824, heads=40, layers=40)
WAN21_1_3B = WanDiTConfig(dim=1536, ffn=8960, heads=12, layers=30)
WAN22_T2V_A14B = replace(WAN21_14B, per_token_time=True)
WAN22_I2V_A14B = replace(WAN22_T2V_A14B, in_dim=36)
WAN22_TI2V_5B = WanDiTConfig(dim=3072, ffn=14336, heads=24, layers=30, in_dim=48, out_dim=48,
                             per_token_time=True)


class CastLinear(nn.Linear):
    """Linear run in its weight dtype, as the original's bf16 autocast runs it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class F32Linear(nn.Linear):
    """Linear computed in float32 whatever the weight dtype (the original's fp32 autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


class F32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input dtype (W22 `WanLayerNorm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[N] positions → [N, dim] (cos | sin), computed in float64 like the original."""
    half = dim // 2
    pos = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def rope_freqs_3d(head_dim: int, grid: tuple[int, int, int], device: torch.device,
                  theta: float = 10000.0) -> torch.Tensor:
    """[F·H·W, head_dim/2] complex128 rotations; the head dim is split over (time, height, width)."""
    f, h, w = grid
    d_s = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_s

    def axis(d: int, n: int) -> torch.Tensor:
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        return torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv)

    angles = torch.cat([
        axis(d_t, f)[:, None, None].expand(f, h, w, -1),
        axis(d_s, h)[None, :, None].expand(f, h, w, -1),
        axis(d_s, w)[None, None, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, head_dim // 2)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope_f64(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of `x` [B, L, H, D] by `freqs` [L, D/2] in complex128, return float32.

    The original (W22 `rope_apply`) works in float64, so its transient memory is two float64
    copies of q (or k); this keeps that peak rather than the float32 one of `layers.apply_rope`.
    """
    b, n, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, n, h, d // 2, 2))
    return torch.view_as_real(xc * freqs[None, :, None]).flatten(3).float()


class WanAttention(nn.Module):
    """q, k, v, o with bias; RMSNorm over the full width on q and k; optional rotary."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = CastLinear(dim, dim)
        self.k = CastLinear(dim, dim)
        self.v = CastLinear(dim, dim)
        self.o = CastLinear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                freqs: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        src = x if context is None else context
        q = self.norm_q(self.q(x)).view(b, n, self.heads, -1)
        k = self.norm_k(self.k(src)).view(b, src.shape[1], self.heads, -1)
        v = self.v(src).view(b, src.shape[1], self.heads, -1)
        if freqs is not None:
            # the original hands float32 q, k to flash attention, which casts them back
            q = apply_rope_f64(q, freqs).to(v.dtype)
            k = apply_rope_f64(k, freqs).to(v.dtype)
        return self.o(attention(q, k, v))


class WanBlock(nn.Module):
    """Self-attn (rotary) → cross-attn to text → FFN, modulated by the time embedding."""

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = F32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, cfg.heads, cfg.eps)
        self.norm3 = F32LayerNorm(dim, cfg.eps, elementwise_affine=True)  # cross_attn_norm
        self.cross_attn = WanAttention(dim, cfg.heads, cfg.eps)
        self.norm2 = F32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(CastLinear(dim, cfg.ffn), nn.GELU(approximate="tanh"),
                                 CastLinear(cfg.ffn, dim))
        self.modulation = nn.Parameter(torch.empty(1, 6, dim))

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                freqs: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], e0 [B, L or 1, 6, dim] float32, context [B, Lt, dim], freqs [L, hd/2]
        complex128 (`rope_freqs_3d`)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            self.modulation.float().unsqueeze(0) + e0).unbind(2)
        y = self.self_attn(self.norm1(x).float() * (1 + scale1) + shift1, freqs=freqs)
        x = x + y * gate1
        x = x + self.cross_attn(self.norm3(x), context=context)
        y = self.ffn(self.norm2(x).float() * (1 + scale2) + shift2)
        return x + y * gate2


class WanHead(nn.Module):
    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = F32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = F32Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(self.norm(x) * (1 + scale) + shift)


class WanDiT(ResidencyComponent):
    """Wan denoiser: latents [B, C, T, H, W] → prediction [B, out_dim, T, H, W] (float32).

    ``cond["text_encoder"]`` holds the umT5 hidden states [B, 512, text_dim]; I2V models
    (``in_dim`` 36) also need ``cond["image_latents"]`` [B, 20, T, H, W] (4 mask + 16 latent
    channels), concatenated after ``x`` on channels as the original does.
    """

    block_attrs = ("blocks",)

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(CastLinear(cfg.text_dim, dim),
                                            nn.GELU(approximate="tanh"), CastLinear(dim, dim))
        self.time_embedding = nn.Sequential(F32Linear(cfg.freq_dim, dim), nn.SiLU(),
                                            F32Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), F32Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.layers))
        self.head = WanHead(dim, math.prod(cfg.patch) * cfg.out_dim, cfg.eps)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]
                ) -> torch.Tensor:
        cfg = self.cfg
        if "image_latents" in cond:
            x = torch.cat([x, cond["image_latents"].to(x.dtype)], dim=1)
        if x.shape[1] != cfg.in_dim:
            raise ValueError(f"WanDiT expects {cfg.in_dim} input channels, got {x.shape[1]}"
                             + (" (I2V needs cond['image_latents'])" if cfg.in_dim == 36 else ""))
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        b, _, f, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        n = x.shape[1]

        t = t.to(x.device).reshape(-1).expand(b)
        times = t[:, None].expand(b, n) if cfg.per_token_time else t[:, None]
        e = self.time_embedding(
            sinusoidal_embedding(cfg.freq_dim, times.flatten()).float().unflatten(0, times.shape))
        e0 = self.time_projection(e).unflatten(2, (6, cfg.dim))

        context = self.text_embedding(cond["text_encoder"])
        freqs = rope_freqs_3d(cfg.head_dim, (f, h, w), x.device)
        for block in self.blocks:
            x = block(x, e0, context, freqs)
        x = self.head(x, e)
        return self.unpatchify(x, (f, h, w))

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, F·H·W, prod(patch)·c] → [B, c, F·pt, H·ph, W·pw]."""
        (f, h, w), (pt, ph, pw), c = grid, self.cfg.patch, self.cfg.out_dim
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, c)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(x.shape[0], c, f * pt, h * ph, w * pw)
