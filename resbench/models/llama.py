"""Decoder-only language models used as text encoders: Llama-3-8B (HunyuanVideo, the LLM half
of `llava-llama-3-8b`) and the language model of Qwen2.5-VL-7B (Qwen-Image, see `qwen_vl`).

Pre-RMSNorm, grouped-query attention with RoPE, SwiGLU MLP, causal mask, no lm_head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from resbench.models.base import ResidencyComponent, scaled_count, scaled_dim
from resbench.models.layers import RMSNorm, apply_rope, attention, rope_frequencies


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    vocab: int
    dim: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    qkv_bias: bool = False
    rope_theta: float = 500_000.0
    eps: float = 1e-5

    def scaled(self, scale: float) -> DecoderConfig:
        if scale >= 1:
            return self
        kv_heads = max(1, round(self.kv_heads * scale))
        heads = max(2, kv_heads * max(1, round(self.heads * scale) // kv_heads))
        head_dim = scaled_dim(self.head_dim, scale**0.5, 8)
        return DecoderConfig(
            vocab=scaled_dim(self.vocab, scale, 64),
            dim=heads * head_dim,
            ffn=scaled_dim(self.ffn, scale, 8),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            layers=scaled_count(self.layers, scale),
            qkv_bias=self.qkv_bias,
            rope_theta=self.rope_theta,
            eps=self.eps,
        )


LLAMA3_8B = DecoderConfig(
    vocab=128_320,
    dim=4096,
    ffn=14336,
    heads=32,
    kv_heads=8,
    head_dim=128,
    layers=32,
    rope_theta=500_000.0,
    eps=1e-5,
)


def scaled_prefix(tokens: int, scale: float) -> int:
    """Template tokens to drop at `scale`: the pipeline shortens prompts in proportion below
    scale 1 (to ``max(16, round(text_len · scale))``), so the template shrinks with them."""
    return tokens if scale >= 1 else round(tokens * scale)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.input_norm = RMSNorm(cfg.dim, cfg.eps)
        self.q = nn.Linear(cfg.dim, cfg.heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.heads * cfg.head_dim, cfg.dim, bias=False)
        self.post_norm = RMSNorm(cfg.dim, cfg.eps)
        self.gate = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.input_norm(x)
        # RoPE on interleaved pairs rather than HF's two halves: the same map up to a fixed
        # permutation of the (random) q/k weights, with the same cost.
        q = apply_rope(self.q(h).view(b, n, self.heads, self.head_dim), angles)
        k = apply_rope(self.k(h).view(b, n, self.kv_heads, self.head_dim), angles)
        v = self.v(h).view(b, n, self.kv_heads, self.head_dim)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        x = x + self.o(attention(q, k, v, mask))
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class DecoderTextEncoder(ResidencyComponent):
    """Text encoder: token ids [B, L] → hidden states [B, L - drop_prefix, dim].

    `skip_last` picks the hidden state: 0 is the final, normed one (Qwen-Image uses
    ``hidden_states[-1]``); k > 0 is the un-normed output of layer ``layers - 1 - k``
    (HunyuanVideo uses ``hidden_states[-3]``, k = 2). All layers run either way, as they do
    under HF ``output_hidden_states``. `drop_prefix` removes the prompt-template tokens the
    pipelines crop (HunyuanVideo 95, Qwen-Image 34), so inputs must be longer than it.
    """

    block_attrs: ClassVar[tuple[str, ...]] = ("layers",)

    def __init__(self, cfg: DecoderConfig, *, skip_last: int = 0, drop_prefix: int = 0) -> None:
        super().__init__()
        self.cfg, self.skip_last, self.drop_prefix = cfg, skip_last, drop_prefix
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        if n <= self.drop_prefix:
            raise ValueError(f"need more than {self.drop_prefix} tokens (template prefix), got {n}")
        x = self.embed_tokens(input_ids)
        angles = rope_frequencies(self.cfg.head_dim, n, self.cfg.rope_theta).to(x.device)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        kept = x
        for i, layer in enumerate(self.layers):
            x = layer(x, angles, mask)
            if i == len(self.layers) - 1 - self.skip_last:
                kept = x
        out = self.norm(x) if self.skip_last == 0 else kept
        return out[:, self.drop_prefix :]
