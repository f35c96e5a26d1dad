"""Wan DiT (Wan2.1 and Wan2.2): one block design for the 1.3B, 5B and 14B checkpoints.

Follows `wan/modules/model.py` of Wan-Video/Wan2.2 (and Wan2.1) module for module, so parameter
counts are those of the original. Two numerics, chosen by `WanDiTConfig.semantics`, give the
FLOPs and activation sizes of the implementation they name (same parameters, same names):

``original`` (the research repositories; `WanDiT`, `WanBlock`):

* the residual stream ``x`` and the time embeddings are float32 (the original wraps the
  modulation arithmetic in fp32 autocast); the linear layers of attention, FFN and the text MLP
  run in the weight dtype, as the original's bf16 autocast makes them;
* with ``per_token_time`` (every Wan2.2 model there) the timestep is expanded to every token,
  so ``e0`` is ``[B, L, 6, dim]`` float32 and every block makes another tensor of that size;
  Wan2.1 keeps ``[B, 1, 6, dim]``; RoPE is applied in complex128.

``diffusers`` (diffusers' `WanTransformer3DModel`, which sglang follows; `DiffusersWanDiT`,
`DiffusersWanBlock`) — what people deploy:

* the residual stream is bf16: each update is computed in fp32 (``x.float() + y * gate``) and
  cast back; the LayerNorms run in fp32 on ``x.float()`` and the modulated result is cast to
  bf16 before the linear layers; the modulation (table + time projection) is added in fp32;
* the time embedder runs in fp32, its output is cast to bf16 and the time projection runs in
  bf16; one embedding per sample unless ``per_token_time`` (TI2V-5B: the pipeline's
  ``expand_timesteps`` gives every token its own timestep);
* RoPE tables are fp32 (cos, sin), the rotation is computed in fp32 and written into a bf16
  tensor; q/k RMSNorm is `torch.nn.RMSNorm`'s (one fused kernel on CUDA); the head's
  projection runs in bf16 and the output is bf16.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_count, scaled_dim
from resbench.models.layers import FusedRMSNorm, RMSNorm, attention
from resbench.models.mmdit import timestep_embedding

RopeTables = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


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
    """One time embedding per token (`e0` is [B, L, 6, dim]) rather than per sample: every
    Wan2.2 model in the original code; in diffusers only TI2V-5B (`expand_timesteps`)."""
    semantics: str = "original"
    """Numerics: `original` (the research repositories) or `diffusers` (what people deploy);
    see the module doc."""

    def __post_init__(self) -> None:
        if self.semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {', '.join(SEMANTICS)}; "
                             f"got {self.semantics!r}")

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


SEMANTICS = ("original", "diffusers")

WAN21_14B = WanDiTConfig(dim=5120, ffn=13824, heads=40, layers=40)
WAN21_1_3B = WanDiTConfig(dim=1536, ffn=8960, heads=12, layers=30)
# Wan2.2 as deployed (diffusers / sglang), then as the original repository runs it.
WAN22_T2V_A14B = replace(WAN21_14B, semantics="diffusers")
WAN22_I2V_A14B = replace(WAN22_T2V_A14B, in_dim=36)
WAN22_TI2V_5B = WanDiTConfig(dim=3072, ffn=14336, heads=24, layers=30, in_dim=48, out_dim=48,
                             per_token_time=True, semantics="diffusers")
WAN22_T2V_A14B_ORIGINAL = replace(WAN21_14B, per_token_time=True)
WAN22_I2V_A14B_ORIGINAL = replace(WAN22_T2V_A14B_ORIGINAL, in_dim=36)
WAN22_TI2V_5B_ORIGINAL = replace(WAN22_TI2V_5B, semantics="original")


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


def rope_cos_sin_3d(head_dim: int, grid: tuple[int, int, int], device: torch.device,
                    theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (cos, sin), each [F·H·W, head_dim/2], as diffusers' `WanRotaryPosEmbed` makes
    them: angles and their cos / sin in float64 per axis, cast to float32, spread on the grid."""
    f, h, w = grid
    d_s = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_s
    cos, sin = [], []
    for d, n, shape in ((d_t, f, (f, 1, 1, -1)), (d_s, h, (1, h, 1, -1)), (d_s, w, (1, 1, w, -1))):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        angles = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv)
        cos.append(angles.cos().float().view(shape).expand(f, h, w, -1))
        sin.append(angles.sin().float().view(shape).expand(f, h, w, -1))
    return (torch.cat(cos, dim=-1).reshape(f * h * w, head_dim // 2),
            torch.cat(sin, dim=-1).reshape(f * h * w, head_dim // 2))


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of `x` [B, L, H, D] by float32 `cos`, `sin` [L, D/2]: products in float32,
    written into a tensor of `x`'s dtype (diffusers' Wan `apply_rotary_emb`)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None], sin[None, :, None]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out


class WanAttention(nn.Module):
    """q, k, v, o with bias; RMSNorm over the full width on q and k; optional rotary."""

    norm_cls: ClassVar[type[RMSNorm]] = RMSNorm

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = CastLinear(dim, dim)
        self.k = CastLinear(dim, dim)
        self.v = CastLinear(dim, dim)
        self.o = CastLinear(dim, dim)
        self.norm_q = self.norm_cls(dim, eps)
        self.norm_k = self.norm_cls(dim, eps)

    def rotate(self, x: torch.Tensor, freqs: RopeTables) -> torch.Tensor:
        # the original hands float32 q, k to flash attention, which casts them back
        assert isinstance(freqs, torch.Tensor)
        return apply_rope_f64(x, freqs).to(x.dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                freqs: RopeTables | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        src = x if context is None else context
        q = self.norm_q(self.q(x)).view(b, n, self.heads, -1)
        k = self.norm_k(self.k(src)).view(b, src.shape[1], self.heads, -1)
        v = self.v(src).view(b, src.shape[1], self.heads, -1)
        if freqs is not None:
            q, k = self.rotate(q, freqs), self.rotate(k, freqs)
        return self.o(attention(q, k, v))


class DiffusersWanAttention(WanAttention):
    """`WanAttention` with diffusers' numerics: fused RMSNorm, float32 rotary (cos, sin)."""

    norm_cls = FusedRMSNorm

    def rotate(self, x: torch.Tensor, freqs: RopeTables) -> torch.Tensor:
        cos, sin = freqs
        return apply_rope_interleaved(x, cos, sin)


class WanBlock(nn.Module):
    """Self-attn (rotary) → cross-attn to text → FFN, modulated by the time embedding."""

    attention_cls: ClassVar[type[WanAttention]] = WanAttention

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = F32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = self.attention_cls(dim, cfg.heads, cfg.eps)
        self.norm3 = F32LayerNorm(dim, cfg.eps, elementwise_affine=True)  # cross_attn_norm
        self.cross_attn = self.attention_cls(dim, cfg.heads, cfg.eps)
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


class DiffusersWanBlock(WanBlock):
    """`WanBlock` as diffusers' `WanTransformerBlock` computes it: bf16 residual stream, each
    update and each modulated norm computed in float32 and cast back (see the module doc)."""

    attention_cls = DiffusersWanAttention

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                freqs: RopeTables) -> torch.Tensor:
        """x [B, L, dim] bf16, e0 [B, L or 1, 6, dim] bf16, freqs float32 (cos, sin)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            self.modulation.float().unsqueeze(0) + e0.float()).unbind(2)
        dtype = x.dtype
        y = self.self_attn((self.norm1(x.float()) * (1 + scale1) + shift1).to(dtype), freqs=freqs)
        x = (x.float() + y * gate1).to(dtype)
        x = x + self.cross_attn(self.norm3(x.float()).to(dtype), context=context)
        y = self.ffn((self.norm2(x.float()) * (1 + scale2) + shift2).to(dtype))
        return (x.float() + y.float() * gate2).to(dtype)


class WanHead(nn.Module):
    linear_cls: ClassVar[type[nn.Linear]] = F32Linear

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = F32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = self.linear_cls(dim, out_features)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(self.norm(x) * (1 + scale) + shift)


class DiffusersWanHead(WanHead):
    """Modulated fp32 norm cast to bf16, then the projection in bf16 (diffusers' `norm_out`,
    `proj_out`)."""

    linear_cls = CastLinear

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head((self.norm(x.float()) * (1 + scale) + shift).to(x.dtype))


class WanDiT(ResidencyComponent):
    """Wan denoiser with the original repositories' numerics: latents [B, C, T, H, W] →
    prediction [B, out_dim, T, H, W] (float32). Build through `wan_dit(cfg)`, which picks
    the class of `cfg.semantics`.

    ``cond["text_encoder"]`` holds the umT5 hidden states [B, 512, text_dim]; I2V models
    (``in_dim`` 36) also need ``cond["image_latents"]`` [B, 20, T, H, W] (4 mask + 16 latent
    channels), concatenated after ``x`` on channels as the original does.
    """

    block_attrs = ("blocks",)
    semantics: ClassVar[str] = "original"
    block_cls: ClassVar[type[WanBlock]] = WanBlock
    head_cls: ClassVar[type[WanHead]] = WanHead
    time_projection_cls: ClassVar[type[nn.Linear]] = F32Linear

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        if cfg.semantics != self.semantics:
            raise ValueError(f"{type(self).__name__} has {self.semantics} semantics, the config "
                             f"{cfg.semantics}: build with wan_dit(cfg)")
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(CastLinear(cfg.text_dim, dim),
                                            nn.GELU(approximate="tanh"), CastLinear(dim, dim))
        self.time_embedding = nn.Sequential(F32Linear(cfg.freq_dim, dim), nn.SiLU(),
                                            F32Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), self.time_projection_cls(dim, 6 * dim))
        self.blocks = nn.ModuleList(self.block_cls(cfg) for _ in range(cfg.layers))
        self.head = self.head_cls(dim, math.prod(cfg.patch) * cfg.out_dim, cfg.eps)

    def embed_time(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`times` [B, L or 1] → e [B, L or 1, dim] and e0 [B, L or 1, 6, dim], float32."""
        e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, times.flatten())
                                .float().unflatten(0, times.shape))
        return e, self.time_projection(e).unflatten(2, (6, self.cfg.dim))

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> RopeTables:
        return rope_freqs_3d(self.cfg.head_dim, grid, device)

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
        # contiguous as diffusers makes it (and the original's cat does): a transposed x would
        # make every residual update and norm of every block work on a transposed layout
        x = x.flatten(2).transpose(1, 2).contiguous()
        n = x.shape[1]

        t = t.to(x.device).reshape(-1).expand(b)
        times = t[:, None].expand(b, n) if cfg.per_token_time else t[:, None]
        e, e0 = self.embed_time(times)

        context = self.text_embedding(cond["text_encoder"])
        freqs = self.rope((f, h, w), x.device)
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


class DiffusersWanDiT(WanDiT):
    """Wan denoiser with diffusers' `WanTransformer3DModel` numerics (see the module doc);
    the prediction is bf16."""

    semantics = "diffusers"
    block_cls = DiffusersWanBlock
    head_cls = DiffusersWanHead
    time_projection_cls = CastLinear

    def embed_time(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedder in float32, its output cast to the weights' dtype, the projection in
        that dtype: e [B, L or 1, dim], e0 [B, L or 1, 6, dim]."""
        emb = timestep_embedding(times.flatten(), self.cfg.freq_dim).unflatten(0, times.shape)
        e = self.time_embedding(emb).to(self.time_projection[1].weight.dtype)
        return e, self.time_projection(e).unflatten(2, (6, self.cfg.dim))

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> RopeTables:
        return rope_cos_sin_3d(self.cfg.head_dim, grid, device)


WAN_DITS: dict[str, type[WanDiT]] = {cls.semantics: cls for cls in (WanDiT, DiffusersWanDiT)}


def wan_dit(cfg: WanDiTConfig) -> WanDiT:
    """The Wan DiT of `cfg`, with the numerics `cfg.semantics` names."""
    return WAN_DITS[cfg.semantics](cfg)
