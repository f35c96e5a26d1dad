"""FLUX.1 autoencoder: 2-D KL VAE with GroupNorm ResNet blocks and mid attention, 8× spatial,
16 latent channels (BFL `modules/autoencoder.py`, `ch=128, ch_mult=[1,2,4,4], num_res_blocks=2`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_dim
from resbench.models.layers import attention


@dataclass(frozen=True, slots=True)
class AEConfig:
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    groups: int = 32
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def scaled(self, scale: float) -> AEConfig:
        if scale >= 1:
            return self
        return AEConfig(
            in_channels=self.in_channels,
            ch=scaled_dim(self.ch, scale, 8),
            ch_mult=self.ch_mult,
            num_res_blocks=self.num_res_blocks,
            z_channels=self.z_channels,
            groups=8,
            scale_factor=self.scale_factor,
            shift_factor=self.shift_factor,
        )


FLUX_AE = AEConfig()


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (1×1 conv projections)."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (
            proj(y).flatten(2).transpose(1, 2)[:, :, None] for proj in (self.q, self.k, self.v)
        )
        out = attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


def mid_block(c: int, groups: int) -> nn.ModuleList:
    """ResNet → attention → ResNet at the lowest resolution (three residency units)."""
    return nn.ModuleList(
        [ResnetBlock(c, c, groups), AttnBlock(c, groups), ResnetBlock(c, c, groups)]
    )


class Level(nn.Module):
    """One resolution level: ResNet blocks, then an optional 2× down- or upsampling conv."""

    def __init__(
        self, cin: int, cout: int, n_blocks: int, groups: int, resample: str | None
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(n_blocks)
        )
        self.resample = resample
        stride, padding = (2, 0) if resample == "down" else (1, 1)
        self.conv = nn.Conv2d(cout, cout, 3, stride=stride, padding=padding) if resample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.resample == "down":
            x = F.pad(x, (0, 1, 0, 1))  # asymmetric pad so a stride-2 conv halves even sizes
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        n = len(chans)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(
                cfg.ch if i == 0 else chans[i - 1],
                chans[i],
                cfg.num_res_blocks,
                cfg.groups,
                "down" if i < n - 1 else None,
            )
            for i in range(n)
        )
        self.mid = mid_block(chans[-1], cfg.groups)
        self.norm_out = nn.GroupNorm(cfg.groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in (*self.down, *self.mid):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        chans = [cfg.ch * m for m in reversed(cfg.ch_mult)]
        n = len(chans)
        self.conv_in = nn.Conv2d(cfg.z_channels, chans[0], 3, padding=1)
        self.mid = mid_block(chans[0], cfg.groups)
        # Stored in execution order (lowest resolution first); BFL stores `up` the other way
        # round, which would make block order differ from run order for streaming.
        self.up = nn.ModuleList(
            Level(
                chans[max(i - 1, 0)],
                chans[i],
                cfg.num_res_blocks + 1,
                cfg.groups,
                "up" if i < n - 1 else None,
            )
            for i in range(n)
        )
        self.norm_out = nn.GroupNorm(cfg.groups, chans[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(chans[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in (*self.mid, *self.up):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class AutoEncoder(ResidencyComponent):
    """Image VAE: `encode` [B, 3, H, W] → [B, z, H/8, W/8] (posterior mean, scaled and shifted),
    `decode` the inverse. Units: encoder levels and mid blocks, decoder mid blocks and levels."""

    block_attrs = ("encoder.down", "encoder.mid", "decoder.mid", "decoder.up")

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.encoder(x.to(self.encoder.conv_in.weight.dtype)).chunk(2, dim=1)[0]
        return self.cfg.scale_factor * (mean - self.cfg.shift_factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.decoder.conv_in.weight.dtype)
        return self.decoder(z / self.cfg.scale_factor + self.cfg.shift_factor)
