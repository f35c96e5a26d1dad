"""HunyuanVideo VAE (`884-16c-hy`): causal 3-D conv VAE with GroupNorm ResNet blocks and a mid
attention that is causal over frames; stride (4, 8, 8), 16 latent channels (diffusers
`AutoencoderKLHunyuanVideo` defaults, `block_out_channels=(128, 256, 512, 512)`).

As with diffusers' defaults (`use_framewise_encoding/decoding=True`), clips longer than one
temporal tile are encoded and decoded in overlapping tiles of 16 frames (stride 12) that are
blended, so activation peaks depend on the tile, not the clip. Spatial tiling is not modelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_dim
from resbench.models.layers import attention


@dataclass(frozen=True, slots=True)
class HunyuanVAEConfig:
    in_channels: int = 3
    latent_channels: int = 16
    block_out: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder; the decoder has one more per level
    groups: int = 32
    spatial_ratio: int = 8
    temporal_ratio: int = 4
    scaling_factor: float = 0.476986
    tile_frames: int = 16  # sample frames per temporal tile
    tile_stride: int = 12

    def scaled(self, scale: float) -> HunyuanVAEConfig:
        if scale >= 1:
            return self
        return HunyuanVAEConfig(
            in_channels=self.in_channels,
            latent_channels=self.latent_channels,
            block_out=tuple(scaled_dim(c, scale, 8) for c in self.block_out),
            layers_per_block=self.layers_per_block,
            groups=8,
            spatial_ratio=self.spatial_ratio,
            temporal_ratio=self.temporal_ratio,
            scaling_factor=self.scaling_factor,
            tile_frames=self.tile_frames,
            tile_stride=self.tile_stride,
        )

    def level_strides(self) -> list[tuple[int, int, int] | None]:
        """(t, h, w) resampling factor of each level, encoder order (None: no resampling)."""
        n = len(self.block_out)
        n_space = self.spatial_ratio.bit_length() - 1
        n_time = self.temporal_ratio.bit_length() - 1
        strides: list[tuple[int, int, int] | None] = []
        for i in range(n):
            space = 2 if i < n_space else 1
            time = 2 if n - 1 - n_time <= i < n - 1 else 1
            strides.append((time, space, space) if space > 1 or time > 1 else None)
        return strides


HUNYUAN_VAE = HunyuanVAEConfig()


class CausalConv3d(nn.Module):
    """Conv3d padded by replication: k-1 frames in front (causal), k//2 on each spatial side."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int | tuple[int, int, int] = 1
    ) -> None:
        super().__init__()
        self.pad = (kernel // 2, kernel // 2, kernel // 2, kernel // 2, kernel - 1, 0)
        self.conv = nn.Conv3d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = CausalConv3d(cout, cout)
        self.conv_shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class MidAttention(nn.Module):
    """Single-head attention over all latent voxels; a token sees its own and earlier frames."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.to_q = nn.Linear(c, c)
        self.to_k = nn.Linear(c, c)
        self.to_v = nn.Linear(c, c)
        self.to_out = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c)
        y = self.norm(tokens.transpose(1, 2)).transpose(1, 2)
        frame = torch.arange(t, device=x.device).repeat_interleave(h * w)
        mask = frame[None, :] <= frame[:, None]
        q, k, v = (proj(y)[:, :, None] for proj in (self.to_q, self.to_k, self.to_v))
        out = tokens + self.to_out(attention(q, k, v, mask))
        return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


def mid_block(c: int, groups: int) -> nn.ModuleList:
    """ResNet → attention → ResNet at the lowest resolution (three residency units)."""
    return nn.ModuleList([ResBlock(c, c, groups), MidAttention(c, groups), ResBlock(c, c, groups)])


class DownLevel(nn.Module):
    def __init__(
        self, cin: int, cout: int, n: int, groups: int, stride: tuple[int, int, int] | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock(cin if i == 0 else cout, cout, groups) for i in range(n)
        )
        self.downsample = CausalConv3d(cout, cout, 3, stride) if stride else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsample(x) if self.downsample is not None else x


class UpLevel(nn.Module):
    def __init__(
        self, cin: int, cout: int, n: int, groups: int, factor: tuple[int, int, int] | None
    ) -> None:
        super().__init__()
        self.factor = factor
        self.resnets = nn.ModuleList(
            ResBlock(cin if i == 0 else cout, cout, groups) for i in range(n)
        )
        self.upsample = CausalConv3d(cout, cout) if factor else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsample is None or self.factor is None:
            return x
        # The first frame is upsampled in space only, so T latent frames become 1 + 2(T-1).
        first = F.interpolate(x[:, :, 0], scale_factor=self.factor[1:], mode="nearest")[:, :, None]
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:].contiguous(), scale_factor=self.factor, mode="nearest")
            first = torch.cat([first, rest], dim=2)
        return self.upsample(first)


class Encoder(nn.Module):
    def __init__(self, cfg: HunyuanVAEConfig) -> None:
        super().__init__()
        chans, g = cfg.block_out, cfg.groups
        self.conv_in = CausalConv3d(cfg.in_channels, chans[0])
        self.down = nn.ModuleList(
            DownLevel(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, g, s)
            for i, s in enumerate(cfg.level_strides())
        )
        self.mid = mid_block(chans[-1], g)
        self.norm_out = nn.GroupNorm(g, chans[-1], eps=1e-6)
        self.conv_out = CausalConv3d(chans[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in (*self.down, *self.mid):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: HunyuanVAEConfig) -> None:
        super().__init__()
        chans, g = tuple(reversed(cfg.block_out)), cfg.groups
        self.conv_in = CausalConv3d(cfg.latent_channels, chans[0])
        self.mid = mid_block(chans[0], g)
        # Same rule as the encoder (diffusers): levels 0-2 double space, levels 1-2 also time.
        self.up = nn.ModuleList(
            UpLevel(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, g, f)
            for i, f in enumerate(cfg.level_strides())
        )
        self.norm_out = nn.GroupNorm(g, chans[-1], eps=1e-6)
        self.conv_out = CausalConv3d(chans[-1], cfg.in_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in (*self.mid, *self.up):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def _blend_frames(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    extent = min(a.shape[2], b.shape[2], extent)
    w = (torch.arange(extent, device=b.device, dtype=b.dtype) / extent).view(1, 1, -1, 1, 1)
    return torch.cat(
        [a[:, :, a.shape[2] - extent :] * (1 - w) + b[:, :, :extent] * w, b[:, :, extent:]], 2
    )


def _over_time_tiles(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile: int,
    stride: int,
    out_stride: int,
    blend: int,
    out_frames: int,
) -> torch.Tensor:
    # Tiles of tile+1 frames every `stride` frames; each later tile drops its first output
    # frame, is blended with the previous tile over `blend` frames and keeps `out_stride`.
    outs = []
    for i in range(0, x.shape[2], stride):
        y = fn(x[:, :, i : i + tile + 1])
        outs.append(y if i == 0 else y[:, :, 1:])
    kept = [outs[0][:, :, : out_stride + 1]]
    for prev, y in zip(outs, outs[1:], strict=False):
        kept.append(_blend_frames(prev, y, blend)[:, :, :out_stride])
    return torch.cat(kept, dim=2)[:, :, :out_frames]


class HunyuanVideoVAE(ResidencyComponent):
    """Video VAE: `encode` [B, 3, F, H, W] → [B, 16, (F-1)/4+1, H/8, W/8] (posterior mean ×
    scaling factor), `decode` the inverse. Units: encoder levels and mid blocks, decoder mid
    blocks and levels."""

    block_attrs = ("encoder.down", "encoder.mid", "decoder.mid", "decoder.up")

    def __init__(self, cfg: HunyuanVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv3d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(cfg.latent_channels, cfg.latent_channels, 1)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = x.to(self.quant_conv.weight.dtype)
        frames = x.shape[2]
        if frames > cfg.tile_frames:
            r = cfg.temporal_ratio
            moments = _over_time_tiles(
                self._encode_tile,
                x,
                tile=cfg.tile_frames,
                stride=cfg.tile_stride,
                out_stride=cfg.tile_stride // r,
                blend=(cfg.tile_frames - cfg.tile_stride) // r,
                out_frames=(frames - 1) // r + 1,
            )
        else:
            moments = self._encode_tile(x)
        return moments.chunk(2, dim=1)[0] * cfg.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        cfg, r = self.cfg, self.cfg.temporal_ratio
        z = z.to(self.post_quant_conv.weight.dtype) / cfg.scaling_factor
        if z.shape[2] > cfg.tile_frames // r:
            return _over_time_tiles(
                self._decode_tile,
                z,
                tile=cfg.tile_frames // r,
                stride=cfg.tile_stride // r,
                out_stride=cfg.tile_stride,
                blend=cfg.tile_frames - cfg.tile_stride,
                out_frames=(z.shape[2] - 1) * r + 1,
            )
        return self._decode_tile(z)
