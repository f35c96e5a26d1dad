"""HunyuanVideo (13B T2V): MMDiT with 20 double-stream + 40 single-stream blocks, a 2-block
token refiner on the LLM text states, Llama-3-8B + CLIP-L text encoders, and the causal 3-D VAE
(Tencent `hyvideo/modules/models.py` `HYVideo-T/2-cfgdistill`; diffusers
`transformer_hunyuan_video.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
from resbench.models.clip import CLIP_L14, CLIPTextEncoder
from resbench.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVideoVAE
from resbench.models.layers import attention
from resbench.models.llama import LLAMA3_8B, DecoderTextEncoder, scaled_prefix
from resbench.models.mmdit import (
    DoubleStreamBlock,
    FinalLayer,
    MLPEmbedder,
    SingleStreamBlock,
    grid_ids,
    patchify,
    rope_angles,
    scaled_axes,
    timestep_embedding,
    unpatchify,
)
from resbench.models.registry import register
from resbench.models.rules import size_and_frame_rule


@dataclass(frozen=True, slots=True)
class HunyuanVideoConfig:
    in_channels: int = 16
    out_channels: int = 16
    hidden: int = 3072
    heads: int = 24
    mlp_ratio: float = 4.0
    depth: int = 20
    depth_single: int = 40
    depth_refiner: int = 2
    text_dim: int = 4096  # LLM hidden states
    pooled_dim: int = 768  # CLIP pooled
    patch_t: int = 1
    patch_s: int = 2
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: float = 256.0
    default_guidance: float = 6.0

    def scaled(self, scale: float) -> HunyuanVideoConfig:
        if scale >= 1:
            return self
        heads = max(2, round(self.heads * scale))
        head_dim = scaled_dim(self.hidden // self.heads, scale**0.5, 8)
        # Text widths follow the encoders built at the same scale.
        return HunyuanVideoConfig(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            hidden=heads * head_dim,
            heads=heads,
            mlp_ratio=self.mlp_ratio,
            depth=scaled_count(self.depth, scale),
            depth_single=scaled_count(self.depth_single, scale),
            depth_refiner=self.depth_refiner,
            text_dim=LLAMA3_8B.scaled(scale).dim,
            pooled_dim=CLIP_L14.scaled(scale).dim,
            patch_t=self.patch_t,
            patch_s=self.patch_s,
            axes_dim=scaled_axes(self.axes_dim, head_dim),
            theta=self.theta,
            default_guidance=self.default_guidance,
        )


HUNYUAN_VIDEO_T2V = HunyuanVideoConfig()


class RefinerBlock(nn.Module):
    """Self-attention + SiLU MLP over text tokens, gated by the refiner's time/text vector."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, dim)
        self.gates = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        gate_attn, gate_mlp = self.gates(F.silu(temb))[:, None, :].chunk(2, dim=-1)
        h = self.norm1(x)
        q, k, v = (proj(h).view(b, n, self.heads, -1) for proj in (self.to_q, self.to_k, self.to_v))
        x = x + gate_attn * self.to_out(attention(q, k, v))
        return x + gate_mlp * self.fc2(F.silu(self.fc1(self.norm2(x))))


class TokenRefiner(nn.Module):
    def __init__(self, cfg: HunyuanVideoConfig) -> None:
        super().__init__()
        mlp_hidden = int(cfg.hidden * cfg.mlp_ratio)
        self.time_in = MLPEmbedder(256, cfg.hidden)
        self.text_in = MLPEmbedder(cfg.text_dim, cfg.hidden)  # mean-pooled LLM states
        self.proj_in = nn.Linear(cfg.text_dim, cfg.hidden)
        self.blocks = nn.ModuleList(
            RefinerBlock(cfg.hidden, cfg.heads, mlp_hidden) for _ in range(cfg.depth_refiner)
        )

    def forward(self, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_in(timestep_embedding(t)) + self.text_in(text.mean(dim=1))
        x = self.proj_in(text)
        for block in self.blocks:
            x = block(x, temb)
        return x


class HunyuanVideoTransformer(ResidencyComponent):
    """The HunyuanVideo DiT.

    ``forward(x, t, cond)``: `x` latents [B, 16, T, H/8, W/8]; `t` [B] in [0, 1000];
    ``cond["text_encoder"]`` LLM states [B, L, 4096], ``cond["text_encoder_2"]`` CLIP pooled
    [B, 768], optional ``cond["guidance"]`` (embedded scale). Units: the two token-refiner
    blocks (they run first), then the double- and single-stream blocks.
    """

    block_attrs = ("token_refiner.blocks", "double_blocks", "single_blocks")

    def __init__(self, cfg: HunyuanVideoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mlp_hidden = int(cfg.hidden * cfg.mlp_ratio)
        patch = cfg.patch_t * cfg.patch_s * cfg.patch_s
        # A Linear over flattened patches: the same weights and FLOPs as the Conv3d patch embed.
        self.img_in = nn.Linear(cfg.in_channels * patch, cfg.hidden)
        self.time_in = MLPEmbedder(256, cfg.hidden)
        self.guidance_in = MLPEmbedder(256, cfg.hidden)
        self.vector_in = MLPEmbedder(cfg.pooled_dim, cfg.hidden)
        self.token_refiner = TokenRefiner(cfg)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(cfg.hidden, cfg.heads, mlp_hidden) for _ in range(cfg.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(cfg.hidden, cfg.heads, mlp_hidden) for _ in range(cfg.depth_single)
        )
        self.final_layer = FinalLayer(cfg.hidden, cfg.out_channels * patch)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        cfg, dtype = self.cfg, self.img_in.weight.dtype
        b, _, frames, h, w = x.shape
        t = t.to(x.device)
        img = self.img_in(patchify(x.to(dtype), cfg.patch_t, cfg.patch_s))
        g = cond.get("guidance")
        g = torch.full((b,), cfg.default_guidance) if g is None else torch.as_tensor(g)
        vec = self.time_in(timestep_embedding(t))
        vec = vec + self.guidance_in(timestep_embedding(g.to(x.device).reshape(-1) * 1000))
        vec = vec + self.vector_in(cond["text_encoder_2"])
        txt = self.token_refiner(cond["text_encoder"].to(dtype), t)

        ids = grid_ids(frames // cfg.patch_t, h // cfg.patch_s, w // cfg.patch_s, x.device)
        img_angles = rope_angles(ids, cfg.axes_dim, cfg.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, img_angles)  # text tokens get no rotary embedding
        n_txt = txt.shape[1]
        angles = torch.cat([img_angles.new_zeros(n_txt, img_angles.shape[1]), img_angles])
        joint = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            joint = block(joint, vec, angles)
        out = self.final_layer(joint[:, n_txt:], vec)
        return unpatchify(out, x.shape, cfg.patch_t, cfg.patch_s).to(x.dtype)


LLM_TEMPLATE_TOKENS = 95  # `dit-llm-encode-video` prompt template, cropped after encoding
LLM_TEXT_LEN = 256


def _llm(scale: float) -> nn.Module:
    return DecoderTextEncoder(
        LLAMA3_8B.scaled(scale), skip_last=2, drop_prefix=scaled_prefix(LLM_TEMPLATE_TOKENS, scale)
    )


def _clip(scale: float) -> nn.Module:
    return CLIPTextEncoder(CLIP_L14.scaled(scale))


def _transformer(scale: float) -> nn.Module:
    return HunyuanVideoTransformer(HUNYUAN_VIDEO_T2V.scaled(scale))


def _vae(scale: float) -> nn.Module:
    return HunyuanVideoVAE(HUNYUAN_VAE.scaled(scale))


HUNYUAN_VIDEO_SPEC = register(
    ModelSpec(
        name="hunyuanvideo",
        family="hunyuanvideo",
        description="HunyuanVideo 13B text-to-video: MMDiT, Llama-3-8B + CLIP-L, causal 3-D VAE",
        components=(
            ComponentSpec(
                "text_encoder",
                "text_encoder",
                _llm,
                7_505_186_816,
                "Llama-3-8B (llava-llama-3-8b LM, no lm_head), hidden state [-3]",
                dtype=torch.float16,
                text_len=LLM_TEXT_LEN + LLM_TEMPLATE_TOKENS,
                vocab_size=LLAMA3_8B.vocab,
            ),
            ComponentSpec(
                "text_encoder_2",
                "text_encoder",
                _clip,
                123_060_480,
                "CLIP ViT-L/14 text encoder (pooled output)",
                dtype=torch.float16,
                text_len=77,
                vocab_size=CLIP_L14.vocab,
            ),
            ComponentSpec(
                "transformer",
                "dit",
                _transformer,
                12_821_012_544,
                "HunyuanVideo DiT: 2 refiner + 20 double + 40 single blocks, 3072 wide",
            ),
            ComponentSpec(
                "vae",
                "vae",
                _vae,
                246_478_803,
                "HunyuanVideo causal 3-D VAE (884-16c), temporal tiles of 16 frames",
                dtype=torch.float16,
            ),
        ),
        text_encoders=("text_encoder", "text_encoder_2"),
        dits=("transformer",),
        vae="vae",
        latent=LatentGeometry(z_channels=16, vae_stride_t=4, vae_stride_s=8, patch_t=1, patch_s=2),
        defaults=SamplingDefaults(
            height=720, width=1280, frames=129, steps=50, guidance=6.0, shift=7.0, cfg=False
        ),
        aliases=("hunyuan-video",),
        validate=size_and_frame_rule("hunyuanvideo", size_multiple=16, frame_step=4),
        notes=(
            "cfg-distilled: guidance 6.0 is embedded in the transformer, one pass per step.",
            "The LLM encodes 256 prompt tokens plus the 95-token template, then drops the "
            "template; it runs all 32 layers and keeps hidden state [-3].",
            "Text encoders and VAE in fp16 as in the reference code; the DiT in bf16.",
            "Parameter counts are computed from the module constructors (not corroborated).",
        ),
    )
)
