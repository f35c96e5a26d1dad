"""The memory-bound kernel mix of the pipelines' blocks, for calibrating `elementwise_efficiency`.

`resbench.cost` divides a call's `memory_bytes` (counted by the recorder on meta tensors:
each op's input storages plus its new outputs) by ``hbm_bytes_per_s × elementwise_efficiency``.
A copy kernel's bandwidth says nothing about that efficiency: it depends on which ops the
blocks run (fp32 upcasts, broadcasting modulation, strided rotary halves, norms that a meta
recording sees decomposed while the GPU runs them fused). So `resbench calibrate` runs the
non-matmul ops of one block of each pipeline, as diffusers writes them (Wan2.2's
`WanTransformerBlock` and `WanAttnProcessor`, FLUX's double-stream block, Wan's VAE
resblock), at the pipelines' sizes, and divides the bytes the recorder counts for them
(`counted_bytes`, the same `_MemoryMode` on meta) by their GPU time.

Each mix is a function of tensors made by its `inputs(device, scale)`; `scale` shrinks the
token count (tests run it on CPU at a tiny size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

BF16, FP32 = torch.bfloat16, torch.float32


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """torch.nn.RMSNorm (Wan's norm_q / norm_k over all heads)."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _diffusers_rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """diffusers' RMSNorm (FLUX's per-head norm_q / norm_k)."""
    variance = x.to(FP32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return x.to(weight.dtype) * weight


def _wan_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's apply_rotary_emb: fp32 freqs, strided halves."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def wan_block(x: torch.Tensor, mod: torch.Tensor, table: torch.Tensor, norm_w: torch.Tensor,
              cos: torch.Tensor, sin: torch.Tensor, ffn: torch.Tensor) -> torch.Tensor:
    """The memory-bound ops of one Wan2.2 A14B block (self-attention with rotary, cross-
    attention, FFN), in diffusers' order; the matmuls' and attention's outputs are stood in
    for by inputs of their shapes (`x` itself, `ffn`)."""
    heads = 40
    shift, scale, gate, c_shift, c_scale, c_gate = (table + mod.float()).chunk(6, dim=1)
    h = (F.layer_norm(x.float(), (x.shape[-1],)) * (1 + scale) + shift).type_as(x)
    q, k = _rms(h, norm_w), _rms(h, norm_w)
    q = _wan_rotary(q.unflatten(2, (heads, -1)), cos, sin)
    k = _wan_rotary(k.unflatten(2, (heads, -1)), cos, sin)
    attn = (q + k).flatten(2, 3).type_as(x)  # stands in for SDPA's output, same shape
    x = (x.float() + attn * gate).type_as(x)
    h = F.layer_norm(x.float(), (x.shape[-1],)).type_as(x)
    x = x + _rms(h, norm_w)  # cross-attention: norm_q on the queries, residual add
    h = (F.layer_norm(x.float(), (x.shape[-1],)) * (1 + c_scale) + c_shift).type_as(x)
    f = F.gelu(ffn, approximate="tanh")
    return (x.float() + (h + f[..., :h.shape[-1]]).float() * c_gate).type_as(x)


def _flux_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def flux_block(x: torch.Tensor, ctx: torch.Tensor, mod: torch.Tensor, norm_w: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor, ffn: torch.Tensor) -> torch.Tensor:
    """The memory-bound ops of one FLUX.1 double-stream block (image and text streams:
    AdaLayerNormZero modulation, per-head RMS norms, rotary on the joined sequence, gated
    residuals, GELU-tanh FFN)."""
    heads = 24
    shift, scale, gate, c_shift, c_scale, c_gate = F.silu(mod).chunk(6, dim=1)
    h = F.layer_norm(x, (x.shape[-1],)) * (1 + scale[:, None]) + shift[:, None]
    c = F.layer_norm(ctx, (ctx.shape[-1],)) * (1 + scale[:, None]) + shift[:, None]
    qk = torch.cat([c, h], dim=1).unflatten(2, (heads, -1)).transpose(1, 2)
    q = _flux_rotary(_diffusers_rms(qk, norm_w), cos, sin)
    k = _flux_rotary(_diffusers_rms(qk, norm_w), cos, sin)
    attn = (q + k).transpose(1, 2).flatten(2, 3).to(x.dtype)
    x = x + gate[:, None] * attn[:, ctx.shape[1]:]
    ctx = ctx + gate[:, None] * attn[:, :ctx.shape[1]]
    h = F.layer_norm(x, (x.shape[-1],)) * (1 + c_scale[:, None]) + c_shift[:, None]
    f = F.gelu(ffn, approximate="tanh")
    x = x + c_gate[:, None] * (h + f[..., :h.shape[-1]])
    return torch.cat([ctx, x], dim=1)


def wan_vae_resblock(x: torch.Tensor, gamma: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """The memory-bound ops of a Wan VAE decoder resblock (fp32): channel RMS norm, SiLU,
    the causal cache concatenated in time and padded (the convs are left out)."""
    h = F.normalize(x, dim=1) * x.shape[1] ** 0.5 * gamma
    h = F.silu(h)
    h = F.pad(torch.cat([cache, h], dim=2), (1, 1, 1, 1, 0, 0))
    h = F.normalize(h[:, :, 2:, 1:-1, 1:-1], dim=1) * x.shape[1] ** 0.5 * gamma
    return x + F.silu(h)


@dataclass(frozen=True, slots=True)
class Mix:
    """One block's memory-bound ops at one pipeline size."""

    name: str
    fn: Callable[..., torch.Tensor]
    inputs: Callable[[torch.device | str, float], tuple[torch.Tensor, ...]]


def _wan_inputs(tokens: int) -> Callable[[torch.device | str, float], tuple[torch.Tensor, ...]]:
    def make(device: torch.device | str, scale: float) -> tuple[torch.Tensor, ...]:
        n, d = max(8, int(tokens * scale)), 5120
        return (torch.randn(1, n, d, device=device, dtype=BF16),
                torch.randn(1, 6, d, device=device, dtype=FP32),
                torch.randn(1, 6, d, device=device, dtype=FP32),
                torch.ones(d, device=device, dtype=BF16),
                torch.randn(1, n, 1, 128, device=device, dtype=FP32),
                torch.randn(1, n, 1, 128, device=device, dtype=FP32),
                torch.randn(1, n, 13824, device=device, dtype=BF16))
    return make


def _flux_inputs(device: torch.device | str, scale: float) -> tuple[torch.Tensor, ...]:
    n, t, d = max(8, int(4096 * scale)), max(2, int(512 * scale)), 3072
    return (torch.randn(1, n, d, device=device, dtype=BF16),
            torch.randn(1, t, d, device=device, dtype=BF16),
            torch.randn(1, 6 * d, device=device, dtype=BF16),
            torch.ones(128, device=device, dtype=BF16),
            torch.randn(1, 1, n + t, 128, device=device, dtype=FP32),
            torch.randn(1, 1, n + t, 128, device=device, dtype=FP32),
            torch.randn(1, n, 4 * d, device=device, dtype=BF16))


def _vae_inputs(device: torch.device | str, scale: float) -> tuple[torch.Tensor, ...]:
    side = max(4, int(240 * scale ** 0.5))
    return (torch.randn(1, 192, 4, side, int(side * 832 / 480), device=device, dtype=FP32),
            torch.ones(192, 1, 1, 1, device=device, dtype=FP32),
            torch.randn(1, 192, 2, side, int(side * 832 / 480), device=device, dtype=FP32))


MIXES: tuple[Mix, ...] = (
    Mix("wan2.2-block-7800", wan_block, _wan_inputs(7800)),      # 480x832x17
    Mix("wan2.2-block-14040", wan_block, _wan_inputs(14040)),    # 480x832x33
    Mix("flux-block-4608", flux_block, _flux_inputs),            # 1024x1024
    Mix("wan-vae-resblock-240x416", wan_vae_resblock, _vae_inputs),
)


def counted_bytes(mix: Mix, scale: float = 1.0) -> int:
    """Bytes the recorder counts for `mix` (read plus written by its memory-bound ops),
    from a run on meta tensors under the recorder's own dispatch mode."""
    from resbench.record import _MemoryMode

    args = mix.inputs("meta", scale)
    with torch.no_grad(), _MemoryMode() as mode:  # as diffusers pipelines run
        mix.fn(*args)
    return int(mode.memory_bytes)


def run(mix: Mix, args: tuple[Any, ...]) -> torch.Tensor:
    with torch.no_grad():
        return mix.fn(*args)
