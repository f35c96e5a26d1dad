"""CLIP ViT-L/14 text encoder (FLUX.1, HunyuanVideo): pre-LayerNorm, quick-GELU, causal
self-attention, learned positions; the pipelines use only the pooled (EOS) vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_count, scaled_dim
from resbench.models.layers import attention


@dataclass(frozen=True, slots=True)
class CLIPTextConfig:
    vocab: int = 49_408
    positions: int = 77
    dim: int = 768
    ffn: int = 3072
    heads: int = 12
    layers: int = 12
    eps: float = 1e-5

    def scaled(self, scale: float) -> CLIPTextConfig:
        if scale >= 1:
            return self
        heads = max(2, round(self.heads * scale))
        head_dim = scaled_dim(self.dim // self.heads, scale**0.5, 8)
        return CLIPTextConfig(
            vocab=scaled_dim(self.vocab, scale, 64),
            positions=self.positions,
            dim=heads * head_dim,
            ffn=scaled_dim(self.ffn, scale, 8),
            heads=heads,
            layers=scaled_count(self.layers, scale),
            eps=self.eps,
        )


CLIP_L14 = CLIPTextConfig()


class CLIPLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, cfg.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(b, n, self.heads, -1) for proj in (self.q, self.k, self.v))
        x = x + self.o(attention(q, k, v, mask))
        h = self.fc1(self.norm2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))  # quick-GELU


class CLIPTextEncoder(ResidencyComponent):
    """Text encoder: token ids [B, L ≤ 77] → pooled vector [B, dim] at the EOS token.

    As in `CLIPTextModel`, the EOS position is the argmax of the ids (EOS has the largest id).
    """

    block_attrs = ("layers",)

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.position_embedding = nn.Embedding(cfg.positions, cfg.dim)
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        for layer in self.layers:
            x = layer(x, mask)
        x = self.final_norm(x)
        return x[torch.arange(b, device=x.device), input_ids.argmax(dim=-1)]
