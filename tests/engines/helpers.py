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
