from __future__ import annotations

import diffusers
import pytest
import torch

from resbench.engines.build import build_pipeline, materialize, pipeline_configs
from resbench.engines.catalog import get_engine_model, load_config
from resbench.engines.run import run_pipeline
from resbench.errors import InputError
from resbench.pipeline import Request
from tests.engines.helpers import FLUX_TINY, WAN_TINY

# Published full-size parameter counts (corroborated, ../shared/reference/models.md §1-3).
UMT5_XXL, T5_XXL, CLIP_L = 5_680_910_336, 4_762_310_656, 123_060_480
PUBLISHED = {
    "wan2.2-t2v-a14b": {"text_encoder": UMT5_XXL, "transformer": 14_288_491_584,
                        "transformer_2": 14_288_491_584, "vae": 126_892_531},
    "wan2.2-ti2v-5b": {"text_encoder": UMT5_XXL, "transformer": 4_999_787_712,
                       "vae": 704_688_668},
    "flux.1-dev": {"text_encoder": CLIP_L, "text_encoder_2": T5_XXL,
                   "transformer": 11_901_408_320, "vae": 83_819_683},
}


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_size():
    return {name: build_pipeline(name) for name in PUBLISHED}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_counts_equal_published_and_nothing_is_allocated(full_size, name):
    pipe = full_size[name]
    for component, published in PUBLISHED[name].items():
        module = getattr(pipe, component)
        assert params(module) == published, component
        assert all(t.is_meta for t in [*module.parameters(), *module.buffers()])


def test_the_real_pipeline_objects_without_tokenizers(full_size):
    wan = full_size["wan2.2-t2v-a14b"]
    assert type(wan) is diffusers.WanPipeline
    assert wan.config.boundary_ratio == 0.875
    assert wan.tokenizer is None
    assert type(wan.scheduler) is diffusers.UniPCMultistepScheduler
    assert wan.scheduler.config.flow_shift == 3.0
    assert wan.transformer is not wan.transformer_2
    flux = full_size["flux.1-dev"]
    assert type(flux) is diffusers.FluxPipeline
    assert flux.tokenizer is None and flux.tokenizer_2 is None
    assert flux.scheduler.config.use_dynamic_shifting is True
    assert full_size["wan2.2-ti2v-5b"].config.expand_timesteps is True


def test_dtypes_follow_from_pretrained(full_size):
    wan = full_size["wan2.2-t2v-a14b"]
    fp32 = {n for n, p in wan.transformer.named_parameters() if p.dtype == torch.float32}
    bf16 = {p.dtype for n, p in wan.transformer.named_parameters() if n not in fp32}
    assert bf16 == {torch.bfloat16}
    # WanTransformer3DModel keeps time_embedder, scale_shift_table and norm1-3 in fp32; of
    # the norms only norm2 (the cross-attention norm) has an affine weight.
    in_block_0 = {n for n in fp32 if n.startswith("blocks.0.")}
    assert in_block_0 == {"blocks.0.scale_shift_table", "blocks.0.norm2.weight", "blocks.0.norm2.bias"}
    assert {n for n in fp32 if not n.startswith("blocks.")} == {
        "scale_shift_table", "condition_embedder.time_embedder.linear_1.weight",
        "condition_embedder.time_embedder.linear_1.bias",
        "condition_embedder.time_embedder.linear_2.weight",
        "condition_embedder.time_embedder.linear_2.bias"}
    assert wan.transformer.blocks[0].attn1.norm_q.weight.dtype == torch.bfloat16
    assert {p.dtype for p in wan.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in wan.text_encoder.parameters()} == {torch.bfloat16}


def test_scaled_pipelines_keep_text_widths_consistent():
    wan = pipeline_configs(get_engine_model("wan2.2-t2v-a14b"), scale=0.1)
    assert wan["transformer"]["text_dim"] == wan["text_encoder"]["d_model"] < 4096
    assert wan["transformer"]["num_layers"] == 10  # the zoo keeps at least 10 blocks
    flux = pipeline_configs(get_engine_model("flux.1-dev"), scale=0.1)
    t = flux["transformer"]
    assert t["joint_attention_dim"] == flux["text_encoder_2"]["d_model"]
    assert t["pooled_projection_dim"] == flux["text_encoder"]["hidden_size"]
    assert sum(t["axes_dims_rope"]) == t["attention_head_dim"]
    pipe = build_pipeline("flux.1-dev", scale=0.1)
    assert params(pipe.transformer) < 11_901_408_320 / 100


def test_scale_one_is_the_shipped_config():
    configs = pipeline_configs(get_engine_model("flux.1-dev"))
    assert configs["transformer"] == load_config("flux.1-dev", "transformer")
    assert configs["pipeline"] == {}


def test_overrides_are_checked():
    model = get_engine_model("wan2.2-t2v-a14b")
    configs = pipeline_configs(model, overrides={"pipeline": {"boundary_ratio": 0.5},
                                                 "scheduler": {"flow_shift": 5.0}})
    assert configs["pipeline"]["boundary_ratio"] == 0.5
    assert configs["scheduler"]["flow_shift"] == 5.0
    with pytest.raises(InputError, match="valid keys: .*num_layers"):
        pipeline_configs(model, overrides={"transformer": {"num_blocks": 2}})
    with pytest.raises(InputError, match="sections: .*transformer_2"):
        pipeline_configs(model, overrides={"transformer_3": {}})
    # A constructor argument the shipped file leaves at its default is settable.
    assert pipeline_configs(get_engine_model("wan2.2-ti2v-5b"), overrides={
        "transformer": {"rope_max_seq_len": 512}})["transformer"]["rope_max_seq_len"] == 512


def test_materialize_is_deterministic_per_component_and_parameter():
    a = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu", seed=3)
    b = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu", seed=3)
    c = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu", seed=4)
    for name in ("text_encoder", "transformer", "vae"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point()), name
    # The two experts have the same structure but their own weights.
    w1 = a.transformer.blocks[0].ffn.net[2].weight
    assert not torch.equal(w1, a.transformer_2.blocks[0].ffn.net[2].weight)
    # A component alone gets the same values as inside its pipeline.
    alone = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY).transformer
    materialize(alone, "cpu", seed=3, name="transformer")
    assert torch.equal(alone.blocks[0].ffn.net[2].weight, w1)


def test_materialize_initialises_by_role():
    pipe = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu", seed=0)
    block = pipe.transformer.blocks[0]
    assert torch.equal(block.norm2.weight, torch.ones_like(block.norm2.weight))
    assert torch.equal(block.norm2.bias, torch.zeros_like(block.norm2.bias))
    weight = block.ffn.net[2].weight  # Linear(ffn 64 → dim 32): N(0, 1/64)
    assert abs(weight.float().std().item() - 64**-0.5) < 0.03
    # Buffers hold what the constructor computes (RoPE tables), not zeros or garbage.
    reference = diffusers.WanTransformer3DModel.from_config(pipe.transformer.config)
    assert torch.equal(pipe.transformer.rope.freqs_cos, reference.rope.freqs_cos.to(
        pipe.transformer.rope.freqs_cos.dtype))


@pytest.mark.parametrize(("name", "overrides", "request_"), [
    ("wan2.2-t2v-a14b", WAN_TINY, Request(height=32, width=32, frames=5, steps=3, guidance=4.0)),
    ("flux.1-dev", FLUX_TINY, Request(height=32, width=32, steps=2, guidance=3.5, cfg=False)),
])
def test_tiny_pipelines_run_on_cpu(name, overrides, request_):
    pipe = build_pipeline(name, overrides=overrides, device="cpu", seed=0)
    torch.manual_seed(0)
    out = run_pipeline(pipe, get_engine_model(name), request_)
    expected = (1, request_.frames, 3, 32, 32) if request_.frames > 1 else (1, 3, 32, 32)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()
    assert out.std() > 0
