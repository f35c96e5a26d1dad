"""Qwen-Image (20B): MMDiT of 60 dual-stream blocks over 2×2-packed latents, Qwen2.5-VL-7B as
text encoder and the Wan2.1 VAE used on single frames (diffusers `transformer_qwenimage.py`,
`pipeline_qwenimage.py`, `autoencoder_kl_qwenimage.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from resbench.models.base import (
    ComponentSpec,
    LatentGeometry,
    ModelSpec,
    ResidencyComponent,
    SamplingDefaults,
    scaled_count,
    scaled_dim,
)
from resbench.models.layers import RMSNorm
from resbench.models.llama import scaled_prefix
from resbench.models.mmdit import (
    DoubleStreamBlock,
    FinalLayer,
    MLPEmbedder,
    patchify,
    rope_angles,
    scaled_axes,
    timestep_embedding,
    unpatchify,
)
from resbench.models.qwen_vl import QWEN25_VL_7B_LM, QWEN25_VL_7B_VISION, QwenVLTextEncoder
from resbench.models.registry import register
from resbench.models.rules import size_and_frame_rule
from resbench.models.wan_vae import WAN21_VAE, WanVAE


@dataclass(frozen=True, slots=True)
class QwenImageConfig:
    in_channels: int = 64  # 16 latent channels × 2×2 packing
    out_channels: int = 16
    patch: int = 2
    layers: int = 60
    heads: int = 24
    head_dim: int = 128
    joint_attention_dim: int = 3584  # Qwen2.5-VL hidden states
    mlp_ratio: float = 4.0
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: float = 10_000.0

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def scaled(self, scale: float) -> QwenImageConfig:
        if scale >= 1:
            return self
        head_dim = scaled_dim(self.head_dim, scale**0.5, 8)
        return QwenImageConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            patch=self.patch,
            layers=scaled_count(self.layers, scale),
            heads=max(2, round(self.heads * scale)),
            head_dim=head_dim,
            joint_attention_dim=QWEN25_VL_7B_LM.scaled(scale).dim,
            mlp_ratio=self.mlp_ratio,
            axes_dim=scaled_axes(self.axes_dim, head_dim),
            theta=self.theta,
        )


QWEN_IMAGE_20B = QwenImageConfig()


def qwen_rope_ids(
    height: int, width: int, n_txt: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame, row, col) positions of image tokens, centred on 0 (`scale_rope=True`), and of
    text tokens, which continue on the diagonal from max(height, width) // 2."""
    rows = torch.arange(height, device=device) - (height - height // 2)
    cols = torch.arange(width, device=device) - (width - width // 2)
    grid = torch.meshgrid(
        torch.zeros(1, device=device, dtype=torch.long), rows, cols, indexing="ij"
    )
    img = torch.stack(grid, dim=-1).reshape(-1, 3)
    start = max(height // 2, width // 2)
    txt = (torch.arange(n_txt, device=device) + start)[:, None].expand(n_txt, 3)
    return img, txt


class QwenImageTransformer(ResidencyComponent):
    """The Qwen-Image MMDiT.

    ``forward(x, t, cond)``: `x` latents [B, 16, H/8, W/8], packed into 2×2 tokens inside;
    `t` [B] in [0, 1000]; ``cond["text_encoder"]`` Qwen2.5-VL states [B, L, 3584]. No
    guidance embedding: guidance is true CFG (two passes).
    """

    block_attrs = ("blocks",)

    def __init__(self, cfg: QwenImageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_in = MLPEmbedder(256, cfg.dim)
        self.txt_norm = RMSNorm(cfg.joint_attention_dim, 1e-6)
        self.img_in = nn.Linear(cfg.in_channels, cfg.dim)
        self.txt_in = nn.Linear(cfg.joint_attention_dim, cfg.dim)
        self.blocks = nn.ModuleList(
            DoubleStreamBlock(cfg.dim, cfg.heads, int(cfg.dim * cfg.mlp_ratio))
            for _ in range(cfg.layers)
        )
        self.final_layer = FinalLayer(cfg.dim, cfg.patch**2 * cfg.out_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        cfg, dtype = self.cfg, self.img_in.weight.dtype
        h, w = x.shape[-2] // cfg.patch, x.shape[-1] // cfg.patch
        img = self.img_in(patchify(x.to(dtype), 1, cfg.patch))
        txt = self.txt_in(self.txt_norm(cond["text_encoder"].to(dtype)))
        vec = self.time_in(timestep_embedding(t.to(x.device)))
        img_ids, txt_ids = qwen_rope_ids(h, w, txt.shape[1], x.device)
        img_angles = rope_angles(img_ids, cfg.axes_dim, cfg.theta)
        txt_angles = rope_angles(txt_ids, cfg.axes_dim, cfg.theta)
        for block in self.blocks:
            img, txt = block(img, txt, vec, img_angles, txt_angles)
        out = self.final_layer(img, vec)
        return unpatchify(out, x.shape, 1, cfg.patch).to(x.dtype)


class QwenImageVAE(WanVAE):
    """The Wan2.1 VAE on single frames: 4-D images [B, C, H, W] in and out (5-D also works)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(x[:, :, None])[:, :, 0] if x.dim() == 4 else super().encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z[:, :, None])[:, :, 0] if z.dim() == 4 else super().decode(z)


PROMPT_TEMPLATE_TOKENS = 34  # chat template before the prompt, dropped after encoding
MAX_PROMPT_TOKENS = 512  # `max_sequence_length`


def _text_encoder(scale: float) -> nn.Module:
    return QwenVLTextEncoder(
        QWEN25_VL_7B_LM.scaled(scale),
        QWEN25_VL_7B_VISION.scaled(scale),
        drop_prefix=scaled_prefix(PROMPT_TEMPLATE_TOKENS, scale),
    )


def _transformer(scale: float) -> nn.Module:
    return QwenImageTransformer(QWEN_IMAGE_20B.scaled(scale))


def _vae(scale: float) -> nn.Module:
    return QwenImageVAE(WAN21_VAE.scaled(scale))


QWEN_IMAGE_SPEC = register(
    ModelSpec(
        name="qwen-image",
        family="qwen-image",
        description="Qwen-Image 20B text-to-image: MMDiT, Qwen2.5-VL-7B encoder, Wan2.1 VAE",
        components=(
            ComponentSpec(
                "text_encoder",
                "text_encoder",
                _text_encoder,
                8_292_166_656,
                "Qwen2.5-VL-7B (LM runs; vision tower and lm_head loaded, not run)",
                text_len=MAX_PROMPT_TOKENS + PROMPT_TEMPLATE_TOKENS,
                vocab_size=QWEN25_VL_7B_LM.vocab,
            ),
            ComponentSpec(
                "transformer",
                "dit",
                _transformer,
                20_430_401_088,
                "Qwen-Image MMDiT: 60 dual-stream blocks, 3072 wide",
            ),
            ComponentSpec(
                "vae",
                "vae",
                _vae,
                126_892_531,
                "Wan2.1 VAE structure (AutoencoderKLQwenImage), single frames",
            ),
        ),
        text_encoders=("text_encoder",),
        dits=("transformer",),
        vae="vae",
        latent=LatentGeometry(z_channels=16, vae_stride_t=1, vae_stride_s=8, patch_t=1, patch_s=2),
        defaults=SamplingDefaults(
            height=1024, width=1024, frames=1, steps=50, guidance=4.0, shift=2.0, cfg=True
        ),
        is_video=False,
        validate=size_and_frame_rule("qwen-image", size_multiple=16),
        notes=(
            "Defaults are diffusers' (1024×1024, 50 steps, true_cfg_scale 4.0): CFG runs cond "
            "and uncond as two transformer calls; the README presets use e.g. 1328×1328.",
            "Text: 512 prompt tokens (max_sequence_length, the worst case; real prompts are "
            "padded only to the longest) plus the 34-token template, which is dropped.",
            "Shift 2.0 stands in for the dynamic exponential shift: mu linear from 0.5 at 256 "
            "to 0.9 at 8192 image tokens (exp(mu) ≈ 2.0 at 4096); taken from scheduler config "
            "copies, unverified.",
        ),
    )
)
