"""Pieces shared by the MMDiT families: FLUX.1, HunyuanVideo and Qwen-Image.

All three use the same double-stream block (separate image and text weights, one joint
attention over both token sets) and modulate every sub-layer with shift/scale/gate vectors
computed from a conditioning vector. FLUX and HunyuanVideo add single-stream blocks
(attention and MLP in parallel over the concatenated tokens). Attention has per-head RMS
QK-norm and rotary embeddings over (t, h, w) axes, rotating interleaved pairs.

Conventions of the DiTs built from these pieces:

* ``t`` is the flow-matching timestep in [0, 1000] (sigma × 1000), the value the official
  pipelines embed (BFL passes sigma and multiplies by 1000 inside; the result is the same).
* Embedded guidance is passed as the guidance scale itself (e.g. 3.5) and embedded ×1000.
* Unmasked joint attention is invariant to token order, so every family concatenates
  ``[text; image]`` here whatever order its reference code uses.
* ``qk_norm``: the per-head RMSNorm class; `RMSNorm` computes it op by op in float32,
  `FusedRMSNorm` as `torch.nn.RMSNorm` does (one fused kernel on CUDA), as diffusers' FLUX.1
  does (``FluxAttention.norm_q``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.layers import RMSNorm, apply_rope, attention


def timestep_embedding(
    t: torch.Tensor, dim: int = 256, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of `t` [B] as (cos, sin) halves, in float32."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float().reshape(-1, 1) * torch.exp(-math.log(max_period) * exponent)[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class MLPEmbedder(nn.Module):
    """Linear → SiLU → Linear (FLUX `MLPEmbedder`, diffusers `TimestepEmbedding`)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, dim)
        self.out_layer = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.in_layer.weight.dtype)
        return self.out_layer(F.silu(self.in_layer(x)))


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine parameters, as every MMDiT sub-layer uses before modulation."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Modulation(nn.Module):
    """SiLU → Linear(dim, n·dim), split into n vectors of shape [B, 1, dim]."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.lin = nn.Linear(dim, n * dim)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.n, dim=-1)


class GeluMLP(nn.Module):
    """Linear → GELU(tanh) → Linear, with biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Stream(nn.Module):
    """One stream (image or text) of a double-stream block."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, qkv_bias: bool = True,
                 qk_norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        self.heads = heads
        self.mod = Modulation(dim, 6)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = qk_norm(dim // heads)
        self.k_norm = qk_norm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.mlp = GeluMLP(dim, mlp_hidden)

    def qkv_heads(
        self, x: torch.Tensor, mods: Sequence[torch.Tensor], angles: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shift, scale = mods[0], mods[1]
        b, n, _ = x.shape
        q, k, v = (
            self.qkv(modulate(layer_norm(x), shift, scale)).view(b, n, 3, self.heads, -1).unbind(2)
        )
        q, k = self.q_norm(q), self.k_norm(k)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        return q, k, v

    def finish(
        self, x: torch.Tensor, attn_out: torch.Tensor, mods: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        gate1, shift2, scale2, gate2 = mods[2:]
        x = x + gate1 * self.proj(attn_out)
        return x + gate2 * self.mlp(modulate(layer_norm(x), shift2, scale2))


class DoubleStreamBlock(nn.Module):
    """Image and text tokens with their own weights, attending jointly."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, qkv_bias: bool = True,
                 qk_norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        self.img = Stream(dim, heads, mlp_hidden, qkv_bias, qk_norm)
        self.txt = Stream(dim, heads, mlp_hidden, qkv_bias, qk_norm)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        img_angles: torch.Tensor | None,
        txt_angles: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img_mods, txt_mods = self.img.mod(vec), self.txt.mod(vec)
        iq, ik, iv = self.img.qkv_heads(img, img_mods, img_angles)
        tq, tk, tv = self.txt.qkv_heads(txt, txt_mods, txt_angles)
        out = attention(torch.cat([tq, iq], 1), torch.cat([tk, ik], 1), torch.cat([tv, iv], 1))
        txt_out, img_out = out.split([txt.shape[1], img.shape[1]], dim=1)
        return self.img.finish(img, img_out, img_mods), self.txt.finish(txt, txt_out, txt_mods)


class SingleStreamBlock(nn.Module):
    """Attention and MLP in parallel over the joint sequence, sharing one input projection."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int,
                 qk_norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        self.dim, self.heads, self.mlp_hidden = dim, heads, mlp_hidden
        self.modulation = Modulation(dim, 3)
        self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.q_norm = qk_norm(dim // heads)
        self.k_norm = qk_norm(dim // heads)

    def forward(
        self, x: torch.Tensor, vec: torch.Tensor, angles: torch.Tensor | None
    ) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        b, n, _ = x.shape
        qkv, mlp = self.linear1(modulate(layer_norm(x), shift, scale)).split(
            [3 * self.dim, self.mlp_hidden], dim=-1
        )
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        out = torch.cat([attention(q, k, v), F.gelu(mlp, approximate="tanh")], dim=-1)
        return x + gate * self.linear2(out)


class FinalLayer(nn.Module):
    """Adaptive LayerNorm (shift, scale from the conditioning vector) → Linear."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(F.silu(vec))[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(layer_norm(x), shift, scale))


# --------------------------------------------------------------------------------------------
# Positions, rotary angles and patching


def rope_angles(ids: torch.Tensor, axes_dim: Sequence[int], theta: float) -> torch.Tensor:
    """Angles [L, sum(axes_dim)/2] for positions `ids` [L, n_axes], one band per axis."""
    bands = []
    for axis, d in enumerate(axes_dim):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=ids.device) / d)
        bands.append(ids[:, axis, None].float() * inv)
    return torch.cat(bands, dim=-1)


def grid_ids(frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(t, h, w) integer positions [frames·height·width, 3] in row-major token order."""
    axes = [torch.arange(n, device=device) for n in (frames, height, width)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def scaled_axes(axes_dim: Sequence[int], head_dim: int) -> tuple[int, ...]:
    """RoPE axis widths for a narrower head: proportional, even, summing to `head_dim`."""
    total = sum(axes_dim)
    if head_dim == total:
        return tuple(axes_dim)
    widths = [max(2, round(a * head_dim / total / 2) * 2) for a in axes_dim[:-1]]
    return (*widths, head_dim - sum(widths))


def patchify(x: torch.Tensor, patch_t: int, patch_s: int) -> torch.Tensor:
    """Latents [B, C, H, W] or [B, C, T, H, W] → tokens [B, N, C·pt·ps·ps] (row-major)."""
    if x.dim() == 4:
        x = x.unsqueeze(2)
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // patch_t, patch_t, h // patch_s, patch_s, w // patch_s, patch_s)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (t // patch_t) * (h // patch_s) * (w // patch_s), -1)


def unpatchify(tokens: torch.Tensor, shape: torch.Size, patch_t: int, patch_s: int) -> torch.Tensor:
    """Inverse of `patchify` for latents of `shape` (4-D or 5-D)."""
    image = len(shape) == 4
    b, c, t, h, w = (shape[0], shape[1], 1, *shape[2:]) if image else shape
    x = tokens.reshape(b, t // patch_t, h // patch_s, w // patch_s, c, patch_t, patch_s, patch_s)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, t, h, w)
    return x[:, :, 0] if image else x
