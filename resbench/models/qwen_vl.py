"""Qwen2.5-VL-7B as Qwen-Image's text encoder (DiffSynth `qwen_image_text_encoder.py` config;
diffusers `pipeline_qwenimage.py`).

The pipeline runs only the 28-layer language model on the prompt and keeps its last, normed
hidden state. The checkpoint also holds a 32-layer vision tower with its patch merger and an
untied lm_head; they are built so that weight bytes are right, but text encoding never calls
them. The vision blocks are residency units listed after the language-model layers (a
strategy that streams blocks as they run never loads them); the lm_head sits in `rest`.
For text, M-RoPE's three position streams coincide, so 1-D RoPE (θ = 10^6) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import scaled_count, scaled_dim
from resbench.models.layers import RMSNorm, attention
from resbench.models.llama import DecoderConfig, DecoderTextEncoder

QWEN25_VL_7B_LM = DecoderConfig(
    vocab=152_064,
    dim=3584,
    ffn=18944,
    heads=28,
    kv_heads=4,
    head_dim=128,
    layers=28,
    qkv_bias=True,
    rope_theta=1_000_000.0,
    eps=1e-6,
)


@dataclass(frozen=True, slots=True)
class VisionConfig:
    depth: int = 32
    dim: int = 1280
    ffn: int = 3420
    heads: int = 16
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2  # 2×2 patches merged into one token for the LM
    in_channels: int = 3
    out_dim: int = 3584  # the language model's width

    def scaled(self, scale: float) -> VisionConfig:
        if scale >= 1:
            return self
        heads = max(2, round(self.heads * scale))
        return VisionConfig(
            depth=scaled_count(self.depth, scale),
            dim=heads * scaled_dim(self.dim // self.heads, scale**0.5, 8),
            ffn=scaled_dim(self.ffn, scale, 8),
            heads=heads,
            patch=self.patch,
            temporal_patch=self.temporal_patch,
            merge=self.merge,
            in_channels=self.in_channels,
            out_dim=QWEN25_VL_7B_LM.scaled(scale).dim,
        )


QWEN25_VL_7B_VISION = VisionConfig()


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = RMSNorm(cfg.dim, 1e-6)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = RMSNorm(cfg.dim, 1e-6)
        self.gate = nn.Linear(cfg.dim, cfg.ffn)
        self.up = nn.Linear(cfg.dim, cfg.ffn)
        self.down = nn.Linear(cfg.ffn, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).unbind(2)
        x = x + self.proj(attention(q, k, v))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class VisionTower(nn.Module):
    """Patch embedding, ViT blocks and the 2×2 patch merger into the LM width.

    `forward` (not used by Qwen-Image's text encoding) takes patches [B, N, 3, 2, 14, 14]
    with N a multiple of 4 and uses full attention: the window attention and 2-D RoPE of the
    real tower are not modelled.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kernel = (cfg.temporal_patch, cfg.patch, cfg.patch)
        self.patch_embed = nn.Conv3d(cfg.in_channels, cfg.dim, kernel, kernel, bias=False)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        merged = cfg.dim * cfg.merge**2
        self.merger_norm = RMSNorm(cfg.dim, 1e-6)
        self.merger_in = nn.Linear(merged, merged)
        self.merger_out = nn.Linear(merged, cfg.out_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, n = patches.shape[:2]
        x = self.patch_embed(patches.flatten(0, 1)).view(b, n, -1)
        for block in self.blocks:
            x = block(x)
        x = self.merger_norm(x).reshape(b, n // self.cfg.merge**2, -1)
        return self.merger_out(F.gelu(self.merger_in(x)))


class QwenVLTextEncoder(DecoderTextEncoder):
    """Qwen2.5-VL-7B: token ids [B, L] → last hidden state [B, L - drop_prefix, 3584]."""

    block_attrs = ("layers", "visual.blocks")

    def __init__(self, cfg: DecoderConfig, vision: VisionConfig, *, drop_prefix: int = 0) -> None:
        super().__init__(cfg, drop_prefix=drop_prefix)
        self.visual = VisionTower(vision)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
