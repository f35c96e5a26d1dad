"""Tiny configs for the engine tests."""

from __future__ import annotations

# Tiny configs (overrides of the shipped ones) that keep every structural feature: two Wan
# experts with CFG and the boundary switch, the per-layer relative bias of umT5, a causal
# VAE decoding frame by frame; FLUX's double and single blocks, CLIP pooled + T5.
WAN_TINY = {
    "text_encoder": {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2,
                     "vocab_size": 64},
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64,
                    "num_layers": 3, "text_dim": 32},
    "transformer_2": {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64,
                      "num_layers": 3, "text_dim": 32},
    "vae": {"base_dim": 8},
}

FLUX_TINY = {
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                     "num_hidden_layers": 2, "vocab_size": 100, "projection_dim": 32},
    "text_encoder_2": {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2,
                       "vocab_size": 64},
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 16,
                    "axes_dims_rope": [4, 6, 6], "num_layers": 2, "num_single_layers": 3,
                    "joint_attention_dim": 32, "pooled_projection_dim": 32},
    "vae": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4},
}


def word_tokenizer(model_max_length: int = 512):
    """A tiny word-level tokenizer (ids below the tiny encoders' vocabularies), standing in
    for the tokenizers a real pipeline is loaded with."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "cat", "on", "mat", "red", "fox", "in", "the",
             "snow", "photo", "of"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length)

# LTX-2, from the tiny components of diffusers' tests/pipelines/ltx2 (a tiny Gemma 3 in place
# of hf-internal-testing/tiny-gemma3): both streams of the DiT, the connectors, the video
# and audio VAEs, the vocoder and the latent upsampler, so both stages run.
_GEMMA_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                    "vocab_size": 64, "sliding_window": 8, "query_pre_attn_scalar": 8,
                    "layer_types": ["sliding_attention", "full_attention"]}
LTX2_TINY = {
    "text_encoder": {"text_config": _GEMMA_TINY_TEXT,
                     "vision_config": {"hidden_size": 16, "intermediate_size": 32,
                                       "num_hidden_layers": 1, "num_attention_heads": 2,
                                       "image_size": 28, "patch_size": 14},
                     "mm_tokens_per_image": 4},
    "connectors": {"caption_channels": 32, "text_proj_in_factor": 3,
                   "video_connector_num_attention_heads": 4,
                   "video_connector_attention_head_dim": 8, "video_connector_num_layers": 1,
                   "video_connector_num_learnable_registers": None,
                   "audio_connector_num_attention_heads": 4,
                   "audio_connector_attention_head_dim": 8, "audio_connector_num_layers": 1,
                   "audio_connector_num_learnable_registers": None,
                   "connector_rope_base_seq_len": 32, "rope_double_precision": False},
    "transformer": {"in_channels": 4, "out_channels": 4, "num_attention_heads": 2,
                    "attention_head_dim": 8, "cross_attention_dim": 16, "audio_in_channels": 4,
                    "audio_out_channels": 4, "audio_num_attention_heads": 2,
                    "audio_attention_head_dim": 4, "audio_cross_attention_dim": 8,
                    "num_layers": 2, "caption_channels": 32, "rope_double_precision": False},
    "vae": {"latent_channels": 4, "block_out_channels": [8], "decoder_block_out_channels": [8],
            "layers_per_block": [1], "decoder_layers_per_block": [1, 1],
            "spatio_temporal_scaling": [True], "decoder_spatio_temporal_scaling": [True],
            "decoder_inject_noise": [False, False], "downsample_type": ["spatial"],
            "upsample_type": ["spatiotemporal"], "down_block_types": ["LTX2VideoDownBlock3D"],
            "upsample_residual": [False], "upsample_factor": [1], "patch_size": 1,
            "spatial_compression_ratio": None, "temporal_compression_ratio": None},
    "audio_vae": {"base_channels": 4, "ch_mult": [1], "num_res_blocks": 1, "resolution": 32,
                  "latent_channels": 2, "mel_bins": 8},
    "vocoder": {"in_channels": 16, "hidden_channels": 32, "upsample_kernel_sizes": [4, 4],
                "upsample_factors": [2, 2], "resnet_kernel_sizes": [3],
                "resnet_dilations": [[1, 3, 5]], "output_sampling_rate": 16000},
    "latent_upsampler": {"in_channels": 4, "mid_channels": 32, "num_blocks_per_stage": 1},
}

# FLUX.2-dev, from diffusers' tests/pipelines/flux2 (vocabulary cut; 30 Mistral layers, the
# fewest that have hidden states 10, 20 and 30, so the joint width is 3 x 16).
FLUX2_TINY = {
    "text_encoder": {"text_config": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 37,
                                     "num_attention_heads": 4, "num_hidden_layers": 30,
                                     "num_key_value_heads": 2, "head_dim": 4},
                     "vision_config": {"hidden_size": 16, "num_hidden_layers": 1,
                                       "num_attention_heads": 4, "intermediate_size": 37,
                                       "image_size": 30, "patch_size": 6, "head_dim": 4}},
    "transformer": {"in_channels": 4, "num_layers": 1, "num_single_layers": 1,
                    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 48,
                    "axes_dims_rope": [4, 4, 4, 4]},
    "vae": {"sample_size": 32, "down_block_types": ["DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [4],
            "layers_per_block": 1, "latent_channels": 1, "norm_num_groups": 1,
            "use_quant_conv": False, "use_post_quant_conv": False},
}

# Qwen-Image, from diffusers' tests/pipelines/qwenimage (vocabulary cut).
QWEN_IMAGE_TINY = {
    "text_encoder": {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "type": "mrope"},
                     "vision_config": {"depth": 2, "hidden_size": 16, "intermediate_size": 16,
                                       "num_heads": 2, "out_hidden_size": 16}},
    "transformer": {"in_channels": 16, "out_channels": 4, "num_layers": 2,
                    "attention_head_dim": 16, "num_attention_heads": 3, "joint_attention_dim": 16,
                    "axes_dims_rope": [8, 4, 4]},
    "vae": {"base_dim": 24, "z_dim": 4, "dim_mult": [1, 2, 4], "num_res_blocks": 1,
            "temperal_downsample": [False, True], "latents_mean": [0.0] * 4,
            "latents_std": [1.0] * 4},
}


def tiny_flux_pipeline(overrides: dict | None = None):
    """FLUX.1-dev's diffusers pipeline from the tiny configs, fp32 on the CPU, with tokenizers."""
    import torch

    from resbench.engines.build import build_pipeline

    pipe = build_pipeline("flux.1-dev", overrides=overrides or FLUX_TINY, device="cpu",
                          dtype=torch.float32)
    pipe.register_modules(tokenizer=word_tokenizer(77), tokenizer_2=word_tokenizer())
    return pipe
