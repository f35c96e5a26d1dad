"""LTX-Video 0.9.0 VAE: 3-D conv autoencoder with 4×4 pixel patchify, stride (8, 32, 32) and 128
latent channels; causal encoder, non-causal decoder, channel-RMSNorm ResNet blocks, no
attention (diffusers `AutoencoderKLLTXVideo` with the `convert_ltx_to_diffusers.py` "0.9.0"
config: blocks (128, 256, 512, 512), layers per block (4, 3, 3, 3, 4)).

Not modelled: 0.9.1's timestep-conditioned decoder with noise injection (a few small
extra parameters), and the per-channel latent normalisation the pipeline applies outside.
The parameter count has no published reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_dim


@dataclass(frozen=True, slots=True)
class LTXVAEConfig:
    in_channels: int = 3
    latent_channels: int = 128
    block_out: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)  # per level, then the mid block
    scaling: tuple[bool, ...] = (True, True, True, False)  # 2×2×2 resampling per level
    patch_size: int = 4
    eps: float = 1e-6

    def scaled(self, scale: float) -> LTXVAEConfig:
        if scale >= 1:
            return self
        return LTXVAEConfig(
            in_channels=self.in_channels,
            latent_channels=self.latent_channels,
            block_out=tuple(scaled_dim(c, scale, 8) for c in self.block_out),
            layers_per_block=self.layers_per_block,
            scaling=self.scaling,
            patch_size=self.patch_size,
            eps=self.eps,
        )


LTX_VAE_090 = LTXVAEConfig()


def channel_rms(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """RMSNorm over the channel dim (1) without affine parameters."""
    return x * torch.rsqrt(x.float().pow(2).mean(1, keepdim=True) + eps).to(x.dtype)


class Conv3d(nn.Module):
    """3×3×3 (or 1×1×1) conv, zero-padded in space and padded in time by repeating edge frames:
    all in front when causal (encoder), split front/back otherwise (decoder)."""

    def __init__(self, cin: int, cout: int, kernel: int, causal: bool, stride: int = 1) -> None:
        super().__init__()
        self.kernel, self.causal = kernel, causal
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        if k > 1:
            front = k - 1 if self.causal else (k - 1) // 2
            back = 0 if self.causal else (k - 1) // 2
            x = torch.cat(
                [
                    x[:, :, :1].expand(-1, -1, front, -1, -1),
                    x,
                    x[:, :, -1:].expand(-1, -1, back, -1, -1),
                ],
                dim=2,
            )
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, causal: bool, eps: float) -> None:
        super().__init__()
        self.conv1 = Conv3d(cin, cout, 3, causal)
        self.conv2 = Conv3d(cout, cout, 3, causal)
        self.norm3 = nn.LayerNorm(cin, eps=eps) if cin != cout else None
        self.conv_shortcut = Conv3d(cin, cout, 1, causal) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(channel_rms(x)))
        h = self.conv2(F.silu(channel_rms(h)))
        if self.norm3 is not None and self.conv_shortcut is not None:
            x = self.conv_shortcut(self.norm3(x.movedim(1, -1)).movedim(-1, 1))
        return x + h


class DownLevel(nn.Module):
    """ResNet blocks at the input width, a stride-2 conv, then a widening ResNet block."""

    def __init__(self, cin: int, cout: int, n: int, downsample: bool, eps: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(cin, cin, True, eps) for _ in range(n))
        self.downsample = Conv3d(cin, cin, 3, True, stride=2) if downsample else None
        self.conv_out = ResBlock(cin, cout, True, eps) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return self.conv_out(x) if self.conv_out is not None else x


class UpLevel(nn.Module):
    """A narrowing ResNet block, a conv to 8× channels with 2×2×2 depth-to-space, ResNet blocks."""

    def __init__(self, cin: int, cout: int, n: int, upsample: bool, eps: float) -> None:
        super().__init__()
        self.conv_in = ResBlock(cin, cout, False, eps) if cin != cout else None
        self.upsample = Conv3d(cout, cout * 8, 3, False) if upsample else None
        self.resnets = nn.ModuleList(ResBlock(cout, cout, False, eps) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsample is not None:
            b, c, t, h, w = x.shape
            x = self.upsample(x).reshape(b, c, 2, 2, 2, t, h, w)
            x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, 2 * t, 2 * h, 2 * w)
            x = x[:, :, 1:]  # T latent frames become 2T - 1
        for resnet in self.resnets:
            x = resnet(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: LTXVAEConfig) -> None:
        super().__init__()
        chans, n = cfg.block_out, len(cfg.block_out)
        self.conv_in = Conv3d(cfg.in_channels * cfg.patch_size**2, chans[0], 3, True)
        self.down = nn.ModuleList(
            DownLevel(
                chans[i], chans[min(i + 1, n - 1)], cfg.layers_per_block[i], cfg.scaling[i], cfg.eps
            )
            for i in range(n)
        )
        self.mid = nn.ModuleList(
            ResBlock(chans[-1], chans[-1], True, cfg.eps) for _ in range(cfg.layers_per_block[-1])
        )
        # One shared log-variance channel after the means (diffusers repeats it to 128).
        self.conv_out = Conv3d(chans[-1], cfg.latent_channels + 1, 3, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in (*self.down, *self.mid):
            x = block(x)
        return self.conv_out(F.silu(channel_rms(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: LTXVAEConfig) -> None:
        super().__init__()
        chans = tuple(reversed(cfg.block_out))
        layers = tuple(reversed(cfg.layers_per_block))
        scaling = tuple(reversed(cfg.scaling))
        self.conv_in = Conv3d(cfg.latent_channels, chans[0], 3, False)
        self.mid = nn.ModuleList(
            ResBlock(chans[0], chans[0], False, cfg.eps) for _ in range(layers[0])
        )
        self.up = nn.ModuleList(
            UpLevel(chans[max(i - 1, 0)], chans[i], layers[i + 1], scaling[i], cfg.eps)
            for i in range(len(chans))
        )
        self.conv_out = Conv3d(chans[-1], cfg.in_channels * cfg.patch_size**2, 3, False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in (*self.mid, *self.up):
            x = block(x)
        return self.conv_out(F.silu(channel_rms(x)))


class LTXVideoVAE(ResidencyComponent):
    """Video VAE: `encode` [B, 3, F, H, W] → [B, 128, (F-1)/8+1, H/32, W/32] (posterior mean),
    `decode` the inverse. Units: encoder levels and mid blocks, decoder mid blocks and levels."""

    block_attrs = ("encoder.down", "encoder.mid", "decoder.mid", "decoder.up")

    def __init__(self, cfg: LTXVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        b, c, t, h, w = x.shape
        x = x.to(self.encoder.conv_in.conv.weight.dtype)
        x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
        moments = self.encoder(x.reshape(b, c * p * p, t, h // p, w // p))
        return moments[:, : self.cfg.latent_channels]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        x = self.decoder(z.to(self.decoder.conv_in.conv.weight.dtype))
        b, _, t, h, w = x.shape
        x = x.reshape(b, -1, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(b, -1, t, h * p, w * p)
