"""Wan2.2 VAE (TI2V-5B): stride (4, 16, 16), 48 latent channels.

Follows `wan/modules/vae2_2.py` of Wan-Video/Wan2.2: the Wan2.1 blocks (`wan_vae.py`) behind
a 2×2 pixel patchify (12 channels in and out), a wider decoder (base 256 vs 160 for the
encoder), and per level a parameter-free residual shortcut around the level (average-pool
down / duplicate up), so each encoder/decoder level is one residency unit. Chunked encode and
decode with the causal feature cache as in Wan2.1. Parameter counts equal the original's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.wan_vae import (
    AttentionBlock,
    CausalConv3d,
    ChannelRMSNorm,
    FeatureCache,
    Resample,
    ResidualBlock,
    WanVAE,
    WanVAEConfig,
)

WAN22_VAE = WanVAEConfig(dim=160, dec_dim=256, z_dim=48)
PATCH = 2


def patchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    """[B, C, F, H, W] → [B, C·p·p, F, H/p, W/p] (channel order c, w-offset, h-offset)."""
    b, c, f, h, w = x.shape
    x = x.view(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int = PATCH) -> torch.Tensor:
    b, cpp, f, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cpp // (p * p), f, h * p, w * p)


class AvgDown3D(nn.Module):
    """Space/time-to-channel reshuffle, then the mean over groups of channels (no weights)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, factor_t, factor_s
        self.group = in_ch * factor_t * factor_s * factor_s // out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_ch, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Channel-to-space/time reshuffle after repeating channels (no weights)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, factor_t, factor_s
        self.repeats = out_ch * factor_t * factor_s * factor_s // in_ch

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        x = x.repeat_interleave(self.repeats, dim=1)
        b, _, t, h, w = x.shape
        x = x.view(b, self.out_ch, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_ch, t * ft, h * fs, w * fs)
        # the first chunk's single latent frame yields a single frame
        return x[:, :, ft - 1:] if first_chunk else x


class DownLevel(nn.Module):
    """Residual blocks (+ downsample) of one encoder level, with an average-pool shortcut."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.blocks = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None, **_: object
                ) -> torch.Tensor:
        # The original keeps a copy of the level input alive across the level.
        shortcut_in = x.clone()
        for layer in self.blocks:
            x = layer(x, cache)
        return x + self.avg_shortcut(shortcut_in)


class UpLevel(nn.Module):
    """Residual blocks (+ upsample) of one decoder level, with a duplicate-up shortcut."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d"))
        self.blocks = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None,
                first_chunk: bool = False) -> torch.Tensor:
        main = x.clone()
        for layer in self.blocks:
            main = layer(main, cache)
        if self.avg_shortcut is None:
            return main
        return main + self.avg_shortcut(x, first_chunk)


class Encoder22(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList(
            DownLevel(dims[i], dims[i + 1], cfg.num_res_blocks,
                      temporal=i < last and cfg.temporal_down[i], down=i != last)
            for i in range(len(cfg.dim_mult)))
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


class Decoder22(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dec_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_up = cfg.temporal_down[::-1]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList(
            [ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
             ResidualBlock(dims[0], dims[0])])
        self.upsamples = nn.ModuleList(
            UpLevel(dims[i], dims[i + 1], cfg.num_res_blocks + 1,
                    temporal=i < last and temporal_up[i], up=i != last)
            for i in range(len(cfg.dim_mult)))
        self.head_norm = ChannelRMSNorm(dims[-1])
        self.head_conv = CausalConv3d(dims[-1], 3 * PATCH * PATCH, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        for layer in self.upsamples:
            x = layer(x, cache, first_chunk=first_chunk)
        return self.head_conv(F.silu(self.head_norm(x)), cache)


class WanVAE22(WanVAE):
    """Wan2.2 VAE. ``encode``: video [B, 3, F, H, W] → latents [B, 48, (F−1)/4+1, H/16, W/16];
    ``decode``: the inverse, clamped to [-1, 1]. Computes in its weight dtype."""

    encoder_cls = Encoder22
    decoder_cls = Decoder22

    def __init__(self, cfg: WanVAEConfig = WAN22_VAE) -> None:
        super().__init__(cfg)

    def _pixels_in(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x)

    def _pixels_out(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x)

    def _decode_chunk(self, chunk: torch.Tensor, cache: FeatureCache, index: int) -> torch.Tensor:
        return self.decoder(chunk, cache, first_chunk=index == 0)
