"""T5 encoders: umT5-XXL (Wan; relative position bias in every layer) and T5-v1.1-XXL
(FLUX, LTX-Video; bias in layer 0 only). Pre-RMSNorm, gated-GELU FFN, no linear biases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_count, scaled_dim
from resbench.models.layers import RMSNorm, attention


@dataclass(frozen=True, slots=True)
class T5Config:
    vocab: int = 256_384
    dim: int = 4096
    ffn: int = 10240
    heads: int = 64
    head_dim: int = 64
    layers: int = 24
    buckets: int = 32
    bias_every_layer: bool = True  # umT5: True; T5 v1.1: False (only layer 0)

    def scaled(self, scale: float) -> T5Config:
        if scale >= 1:
            return self
        heads = max(2, round(self.heads * scale))
        head_dim = scaled_dim(self.head_dim, scale ** 0.5, 8)
        return T5Config(vocab=scaled_dim(self.vocab, scale, 64), dim=heads * head_dim,
                        ffn=scaled_dim(self.ffn, scale, 8), heads=heads, head_dim=head_dim,
                        layers=scaled_count(self.layers, scale), buckets=self.buckets,
                        bias_every_layer=self.bias_every_layer)


UMT5_XXL = T5Config()
T5_V11_XXL = T5Config(vocab=32_128, bias_every_layer=False)


def _relative_buckets(rel: torch.Tensor, buckets: int, max_distance: int = 128) -> torch.Tensor:
    # Bidirectional T5 bucketing: half the buckets per direction, log-spaced past buckets/4.
    half = buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (
        torch.log(rel.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(rel < exact, rel, large)


def position_bias(table: nn.Embedding, buckets: int, length: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device)
    idx = _relative_buckets(pos[None, :] - pos[:, None], buckets)
    return table(idx).permute(2, 0, 1)[None]  # [1, H, L, L]


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool) -> None:
        super().__init__()
        inner = cfg.heads * cfg.head_dim
        self.heads, self.head_dim, self.buckets = cfg.heads, cfg.head_dim, cfg.buckets
        self.norm1 = RMSNorm(cfg.dim)
        self.q = nn.Linear(cfg.dim, inner, bias=False)
        self.k = nn.Linear(cfg.dim, inner, bias=False)
        self.v = nn.Linear(cfg.dim, inner, bias=False)
        self.o = nn.Linear(inner, cfg.dim, bias=False)
        self.rel_bias = nn.Embedding(cfg.buckets, cfg.heads) if has_bias else None
        # T5 v1.1 keeps its one shared bias table outside the blocks (see T5Encoder) so that
        # streaming block 0 out does not take the bias every other block needs.
        self.norm2 = RMSNorm(cfg.dim)
        self.wi_0 = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.wi_1 = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.wo = nn.Linear(cfg.ffn, cfg.dim, bias=False)

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor:
        assert self.rel_bias is not None
        return position_bias(self.rel_bias, self.buckets, length, device)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.rel_bias is not None:
            bias = self.position_bias(x.shape[1], x.device).to(x.dtype)
        b, n, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, n, self.heads, self.head_dim)
        k = self.k(h).view(b, n, self.heads, self.head_dim)
        v = self.v(h).view(b, n, self.heads, self.head_dim)
        # T5 does not scale scores by 1/sqrt(d); fold that into q so SDPA's scaling cancels.
        x = x + self.o(attention(q * math.sqrt(self.head_dim), k, v, bias))
        h = self.norm2(x)
        return x + self.wo(F.gelu(self.wi_0(h), approximate="tanh") * self.wi_1(h))


class T5Encoder(ResidencyComponent):
    """Text encoder: token ids [B, L] → hidden states [B, L, dim]."""

    block_attrs = ("blocks",)

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(
            T5Block(cfg, has_bias=cfg.bias_every_layer) for i in range(cfg.layers)
        )
        self.rel_bias = None if cfg.bias_every_layer else nn.Embedding(cfg.buckets, cfg.heads)
        self.norm = RMSNorm(cfg.dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(input_ids)
        bias = None
        if self.rel_bias is not None:
            bias = position_bias(self.rel_bias, self.cfg.buckets, x.shape[1], x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)
