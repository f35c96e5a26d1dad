"""Wan2.1 VAE: causal 3-D conv autoencoder, stride (4, 8, 8), 16 latent channels.

Follows `wan/modules/vae2_1.py` of Wan-Video/Wan2.2. Encoding and decoding run chunk by chunk
over time like the original (encode: the first frame, then 4 frames a chunk; decode: one
latent frame a chunk), with a causal feature cache: each temporal `CausalConv3d` keeps the
last two frames of its input for the next chunk. So the encoder's and decoder's blocks run
once per chunk and activation peaks are those of one chunk plus the caches.

The building blocks here are shared with the Wan2.2 VAE (`wan_vae22.py`). The latent
normalisation (per-channel mean/std, held outside the module in the original) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_dim
from resbench.models.layers import attention

CACHE_T = 2  # frames of its input a temporal conv carries to the next chunk

FeatureCache = dict[nn.Module, torch.Tensor | None]
"""Per-call state of a chunked encode/decode: module → frames kept from the previous chunk."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WanVAEConfig:
    """Constructor numbers of a Wan VAE (W22 `_video_vae` / `WanVAE_`)."""

    dim: int = 96
    """Encoder base width (level widths are dim × dim_mult)."""
    dec_dim: int = 96
    """Decoder base width (Wan2.2: 256)."""
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    """Residual blocks per encoder level; the decoder has one more per level."""
    temporal_down: tuple[bool, ...] = (False, True, True)
    """Which encoder downsamples also halve time (the decoder mirrors it)."""

    def scaled(self, scale: float) -> WanVAEConfig:
        """Narrower widths, same structure; `z_dim` is kept (it must match the DiT)."""
        if scale >= 1:
            return self
        return replace(self, dim=scaled_dim(self.dim, scale), dec_dim=scaled_dim(self.dec_dim, scale))


WAN21_VAE = WanVAEConfig()


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the past in time.

    With a cache, the past frames come from the previous chunk instead of zeros, and the
    last `CACHE_T` frames of this input are kept for the next one.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1,
                 padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        pad = list(self._pad)
        if cache is None or pad[4] == 0:
            return super().forward(F.pad(x, pad))
        prev = cache.get(self)
        keep = x[:, :, -CACHE_T:].clone()
        if keep.shape[2] < CACHE_T and prev is not None:
            keep = torch.cat([prev[:, :, -1:], keep], dim=2)
        if prev is not None:
            x = torch.cat([prev, x], dim=2)
            pad[4] -= prev.shape[2]
        out = super().forward(F.pad(x, pad))
        cache[self] = keep
        return out


class ChannelRMSNorm(nn.Module):
    """L2-normalise over channels (dim 1), times √C and a per-channel scale (W22 `RMS_norm`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(-1, *([1] * (x.dim() - 2)))
        return F.normalize(x, dim=1) * self.scale * w


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def batch_to_frames(x: torch.Tensor, t: int) -> torch.Tensor:
    bt, c, h, w = x.shape
    return x.reshape(bt // t, t, c, h, w).transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = ChannelRMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, **_: object
                ) -> torch.Tensor:
        h = x if self.shortcut is None else self.shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(F.silu(self.norm2(x)), cache)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, **_: object
                ) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.to_qkv(self.norm(frames_to_batch(x)))
        q, k, v = y.reshape(b * t, 3 * c, h * w).transpose(1, 2).unsqueeze(2).chunk(3, dim=-1)
        y = attention(q, k, v).transpose(1, 2).reshape(b * t, c, h, w)
        return batch_to_frames(self.proj(y), t) + x


class Resample(nn.Module):
    """Spatial ×2 up/down (2-D conv per frame), optionally with a causal temporal ×2.

    Temporal upsampling skips the first chunk (its one latent frame gives one frame) and
    temporal downsampling keeps the first chunk's single frame, as the original does.
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None) -> None:
        super().__init__()
        assert mode in ("upsample2d", "upsample3d", "downsample2d", "downsample3d")
        self.mode = mode
        self.time_conv: CausalConv3d | None = None
        if mode.startswith("up"):
            self.conv = nn.Conv2d(dim, dim if out_dim is None else out_dim, 3, padding=1)
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.conv = nn.Conv2d(dim, dim, 3, stride=2)
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, **_: object
                ) -> torch.Tensor:
        tc = self.time_conv
        if self.mode == "upsample3d" and cache is not None and tc is not None:
            if tc in cache:
                b, c, t, h, w = x.shape
                x = tc(x, cache).reshape(b, 2, c, t, h, w)
                x = torch.stack((x[:, 0], x[:, 1]), dim=3).reshape(b, c, t * 2, h, w)
            else:
                cache[tc] = None  # first chunk: no temporal upsampling, zero history next time
        t = x.shape[2]
        y = frames_to_batch(x)
        if self.mode.startswith("up"):
            # nearest-exact upsampling in fp32 (bf16 lacks the kernel in the original's torch)
            y = F.interpolate(y.float(), scale_factor=2.0, mode="nearest-exact").type_as(y)
        else:
            y = F.pad(y, (0, 1, 0, 1))
        x = batch_to_frames(self.conv(y), t)
        if self.mode == "downsample3d" and cache is not None and tc is not None:
            prev = cache.get(tc)
            keep = x[:, :, -1:].clone()
            if prev is not None:
                x = tc(torch.cat([prev, x], dim=2))
            cache[tc] = keep
        return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig, in_ch: int = 3) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(in_ch, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(d_in, d_out))
                d_in = d_out
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temporal_down[i] else "downsample2d"
                blocks.append(Resample(d_out, mode))
        self.downsamples = nn.ModuleList(blocks)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
             ResidualBlock(dims[-1], dims[-1])])
        self.head_norm = ChannelRMSNorm(dims[-1])
        self.head_conv = CausalConv3d(dims[-1], cfg.z_dim * 2, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        return self.head_conv(F.silu(self.head_norm(x)), cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig, out_ch: int = 3) -> None:
        super().__init__()
        dims = [cfg.dec_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_up = cfg.temporal_down[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
             ResidualBlock(dims[0], dims[0])])
        blocks: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                d_in //= 2  # the previous upsample's conv halves the width
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(d_in, d_out))
                d_in = d_out
            if i != len(cfg.dim_mult) - 1:
                mode = "upsample3d" if temporal_up[i] else "upsample2d"
                blocks.append(Resample(d_out, mode, out_dim=d_out // 2))
        self.upsamples = nn.ModuleList(blocks)
        self.head_norm = ChannelRMSNorm(dims[-1])
        self.head_conv = CausalConv3d(dims[-1], out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        return self.head_conv(F.silu(self.head_norm(x)), cache)


def time_chunks(x: torch.Tensor, first: int, size: int) -> list[torch.Tensor]:
    """Split dim 2 into `first` frames, then chunks of `size` (a ragged tail is dropped)."""
    t = x.shape[2]
    return [x[:, :, :first]] + [x[:, :, s:s + size] for s in range(first, t - size + 1, size)]


class WanVAE(ResidencyComponent):
    """Wan2.1 VAE. ``encode``: video [B, 3, F, H, W] → latents [B, 16, (F−1)/4+1, H/8, W/8];
    ``decode``: the inverse, clamped to [-1, 1]. Computes in its weight dtype (fp32 in the
    official pipelines)."""

    block_attrs = ("encoder.downsamples", "encoder.middle", "decoder.middle", "decoder.upsamples")
    encoder_cls: ClassVar[type[nn.Module]] = Encoder3d
    decoder_cls: ClassVar[type[nn.Module]] = Decoder3d

    def __init__(self, cfg: WanVAEConfig = WAN21_VAE) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = self.encoder_cls(cfg)
        self.quant_conv = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = self.decoder_cls(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        cache: FeatureCache = {}
        x = self._pixels_in(x.to(self.dtype))
        out = torch.cat([self.encoder(chunk, cache) for chunk in time_chunks(x, 1, 4)], dim=2)
        mu, _log_var = self.quant_conv(out).chunk(2, dim=1)
        return mu.contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        cache: FeatureCache = {}
        x = self.post_quant_conv(z.to(self.dtype))
        out = torch.cat([self._decode_chunk(c, cache, i) for i, c in enumerate(time_chunks(x, 1, 1))],
                        dim=2)
        return self._pixels_out(out).clamp_(-1, 1)

    # Hooks the Wan2.2 VAE overrides (2x2 pixel patchify, first-chunk-aware decoder).
    def _pixels_in(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _pixels_out(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _decode_chunk(self, chunk: torch.Tensor, cache: FeatureCache, index: int) -> torch.Tensor:
        return self.decoder(chunk, cache)
