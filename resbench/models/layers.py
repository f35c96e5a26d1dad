"""Layers shared by several families (kept minimal: norms, attention, rotary embedding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on [B, L, H, D] tensors (returns [B, L, H*D]).

    Uses `scaled_dot_product_attention`, which `FlopCounterMode` counts and which runs the
    flash/memory-efficient kernels on GPU, so recorded FLOPs and activation peaks are those
    of the real thing.
    """
    b, lq, h, d = q.shape
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if q.device.type == "meta":
        # On meta, SDPA decomposes into bmm + softmax with an L×L score matrix that no GPU
        # kernel materialises; call the fused ops so recorded FLOPs and working memory are
        # those of the flash / memory-efficient kernels.
        if mask is None:
            out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
        else:
            out = torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, mask.expand(b, h, lq, k.shape[2]), False)[0]
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, h * d)


def rope_frequencies(dim: int, positions: int, theta: float = 10000.0) -> torch.Tensor:
    """[positions, dim//2] angles for one rotary axis (float32)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return torch.outer(torch.arange(positions, dtype=torch.float32), inv)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of `x` [B, L, H, D] by `angles` [L, D//2] (computed in float32)."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = angles.cos()[None, :, None, :]
    sin = angles.sin()[None, :, None, :]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class FusedRMSNorm(RMSNorm):
    """`RMSNorm` as `torch.nn.RMSNorm` computes it (`F.rms_norm`: one fused kernel on CUDA,
    float32 inside, the input's dtype out), where the zoo follows diffusers' numerics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
