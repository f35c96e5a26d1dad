from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resbench.errors import InputError
from resbench.models import get_model, materialize, unit_infos
from resbench.models.base import REST, build_component, count_params
from resbench.models.wan_dit import (
    WAN22_T2V_A14B,
    WAN22_T2V_A14B_ORIGINAL,
    DiffusersWanBlock,
    WanBlock,
    rope_cos_sin_3d,
)
from resbench.pipeline import Request
from resbench.testing.zoo import check_full_size_on_meta, run_tiny

WAN_MODELS = ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "wan2.1-t2v-14b",
              "wan2.1-t2v-1.3b"]
TINY = 0.05

# full-size counts (corroborated, or computed from the original constructors), models.md §1-2
UMT5, DIT_14B, VAE21 = 5_680_910_336, 14_288_491_584, 126_892_531
PUBLISHED = {
    "wan2.2-t2v-a14b": {"text_encoder": UMT5, "transformer": DIT_14B, "transformer_2": DIT_14B,
                        "vae": VAE21},
    "wan2.2-i2v-a14b": {"text_encoder": UMT5, "transformer": 14_288_901_184,
                        "transformer_2": 14_288_901_184, "vae": VAE21},
    "wan2.2-ti2v-5b": {"text_encoder": UMT5, "transformer": 4_999_787_712, "vae": 704_688_668},
    "wan2.1-t2v-14b": {"text_encoder": UMT5, "transformer": DIT_14B, "vae": VAE21},
    "wan2.1-t2v-1.3b": {"text_encoder": UMT5, "transformer": 1_418_996_800, "vae": VAE21},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box their
    # spin-waiting makes these tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def full(model: str, component: str) -> nn.Module:
    return build_component(get_model(model).component(component), 1.0)


@cache
def tiny(model: str, component: str) -> nn.Module:
    module = build_component(get_model(model).component(component), TINY)
    return materialize(module, "cpu", seed=0).float()


@pytest.mark.parametrize("model", WAN_MODELS)
def test_full_size_counts_are_exact(model: str) -> None:
    assert check_full_size_on_meta(get_model(model), rel_tol=0.0) == PUBLISHED[model]


def test_14b_dit_units_match_reference() -> None:
    infos = unit_infos("transformer", full("wan2.2-t2v-a14b", "transformer"))
    blocks, rest = infos[:-1], infos[-1]
    assert len(blocks) == 40 and rest.name == REST
    assert {u.params for u in blocks} == {351_394_304}
    assert {u.weight_bytes for u in blocks} == {2 * 351_394_304}  # bf16
    assert rest.params == 232_719_424


@pytest.mark.parametrize("model", ["wan2.1-t2v-14b", "wan2.2-ti2v-5b"])
def test_vae_units_are_blocks_with_a_small_rest(model: str) -> None:
    vae = full(model, "vae")
    infos = unit_infos("vae", vae)
    assert len(infos) - 1 >= 8
    assert infos[-1].params < 0.01 * count_params(vae)
    assert all(u.weight_bytes == 4 * u.params for u in infos)  # the VAE runs in fp32


ONE_BLOCK_INPUTS = {  # 480x832x81: 32,760 tokens; x, e0, freqs as each DiT hands them
    "diffusers": lambda n, dim: (torch.empty(1, n, dim, dtype=torch.bfloat16),
                                 torch.empty(1, 1, 6, dim, dtype=torch.bfloat16),
                                 (torch.empty(n, 64), torch.empty(n, 64))),
    "original": lambda n, dim: (torch.empty(1, n, dim), torch.empty(1, n, 6, dim),
                                torch.empty(n, 64, dtype=torch.complex128)),
}


@pytest.mark.parametrize(("block_cls", "cfg"), [(DiffusersWanBlock, WAN22_T2V_A14B),
                                                (WanBlock, WAN22_T2V_A14B_ORIGINAL)])
def test_one_14b_block_flops_match_the_analytic_count(block_cls, cfg) -> None:
    tokens, text, dim, ffn = 32_760, 512, 5120, 13_824  # 480x832x81
    with torch.device("meta"):
        block = block_cls(cfg).to(torch.bfloat16)
        x, e0, freqs = ONE_BLOCK_INPUTS[cfg.semantics](tokens, dim)
        context = torch.empty(1, text, dim, dtype=torch.bfloat16)
        with FlopCounterMode(display=False) as counter:
            out = block(x, e0, context, freqs)
    assert out.dtype == x.dtype
    analytic = (2 * tokens * 4 * dim**2 + 4 * tokens**2 * dim
                + 2 * tokens * 2 * dim**2 + 2 * text * 2 * dim**2 + 4 * tokens * text * dim
                + 2 * tokens * 2 * dim * ffn)
    assert counter.get_total_flops() == pytest.approx(analytic, rel=0.05)


@pytest.mark.parametrize("model", [m for m in WAN_MODELS if "i2v" not in m])
def test_tiny_pipeline_runs_on_cpu(model: str) -> None:
    side = 64 if model == "wan2.2-ti2v-5b" else 32
    run = run_tiny(get_model(model), height=side, width=side, frames=5, scale=TINY)
    assert run.text["text_encoder"].shape[1] == 512


def test_tiny_i2v_pipeline_conditions_on_the_encoded_first_frame() -> None:
    spec = get_model("wan2.2-i2v-a14b")
    assert spec.image_conditioning
    vae = tiny(spec.name, "vae")
    text_encoder = tiny(spec.name, "text_encoder")
    ids = torch.randint(0, text_encoder.cfg.vocab, (1, 512), generator=torch.Generator().manual_seed(0))
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        clip = torch.cat([video[:, :, :1], torch.zeros_like(video[:, :, 1:])], dim=2)
        first = vae.encode(clip)
        assert first.shape == (1, 16, 2, 4, 4)
        cond = {"text_encoder": text_encoder(ids),
                "image_latents": torch.cat([torch.zeros(1, 4, 2, 4, 4), first], dim=1)}
        z = torch.randn(1, 16, 2, 4, 4)
        for name in spec.dits:
            out = tiny(spec.name, name)(z, torch.tensor([900.0]), cond)
            assert out.shape == z.shape and torch.isfinite(out).all()
        pixels = vae.decode(z)
    assert pixels.shape == video.shape and torch.isfinite(pixels).all()


def test_dit_runs_in_its_bf16_dtype_and_returns_fp32() -> None:
    spec = get_model("wan2.1-t2v-1.3b").component("transformer")
    dit = materialize(build_component(spec, TINY), "cpu")
    text_dim = dit.cfg.text_dim
    with torch.no_grad():
        out = dit(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]),
                  {"text_encoder": torch.randn(1, 512, text_dim, dtype=torch.bfloat16)})
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(("model", "per_token", "stream"), [
    ("wan2.2-t2v-a14b", False, torch.bfloat16),  # diffusers: one embedding per sample
    ("wan2.2-ti2v-5b", True, torch.bfloat16),  # diffusers' expand_timesteps: one per token
    ("wan2.2-t2v-a14b-orig", True, torch.float32),
    ("wan2.2-ti2v-5b-orig", True, torch.float32),
    ("wan2.1-t2v-14b", False, torch.float32),
])
def test_time_embedding_and_residual_stream(model: str, per_token: bool,
                                            stream: torch.dtype) -> None:
    dit = materialize(build_component(get_model(model).component("transformer"), TINY), "cpu")
    shapes, streams = [], []
    hooks = [dit.time_projection.register_forward_hook(lambda m, i, o: shapes.append(o.shape)),
             dit.blocks[0].register_forward_hook(lambda m, i, o: streams.append(o.dtype))]
    side = 8 if dit.cfg.in_dim == 48 else 4
    try:
        with torch.no_grad():
            dit(torch.randn(1, dit.cfg.in_dim, 2, side, side), torch.tensor([500.0]),
                {"text_encoder": torch.randn(1, 512, dit.cfg.text_dim, dtype=torch.bfloat16)})
    finally:
        for hook in hooks:
            hook.remove()
    tokens = 2 * (side // 2) ** 2
    assert shapes == [(1, tokens if per_token else 1, 6 * dit.cfg.dim)]
    assert streams == [stream]


@pytest.mark.parametrize("model", ["wan2.2-t2v-a14b", "wan2.2-ti2v-5b"])
def test_deployed_and_original_numerics_compute_the_same_function(model: str) -> None:
    """Same parameters; in float32 the two numerics differ by rounding only (the per-token
    embedding of one timestep equals the per-sample one, fp32 RoPE the float64 one)."""
    deployed = tiny(model, "transformer")
    original = tiny(f"{model}-orig", "transformer")
    assert type(deployed).__name__ == "DiffusersWanDiT" and type(original).__name__ == "WanDiT"
    assert {n: p.shape for n, p in deployed.named_parameters()} == {
        n: p.shape for n, p in original.named_parameters()}
    original.load_state_dict(deployed.state_dict())
    side = 8 if deployed.cfg.in_dim == 48 else 4
    x = torch.randn(1, deployed.cfg.in_dim, 2, side, side, generator=torch.Generator().manual_seed(1))
    cond = {"text_encoder": torch.randn(1, 512, deployed.cfg.text_dim)}
    with torch.no_grad():
        a, b = deployed(x, torch.tensor([700.0]), cond), original(x, torch.tensor([700.0]), cond)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_rope_tables_are_the_original_rotations_in_float32() -> None:
    from resbench.models.wan_dit import rope_freqs_3d

    cos, sin = rope_cos_sin_3d(128, (3, 4, 5), torch.device("cpu"))
    freqs = rope_freqs_3d(128, (3, 4, 5), torch.device("cpu"))
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (60, 64)
    torch.testing.assert_close(cos, freqs.real.float())
    torch.testing.assert_close(sin, freqs.imag.float())


def test_i2v_dit_requires_image_latents() -> None:
    dit = tiny("wan2.2-i2v-a14b", "transformer")
    with pytest.raises(ValueError, match="image_latents"):
        dit(torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]),
            {"text_encoder": torch.randn(1, 512, dit.cfg.text_dim)})


@pytest.mark.parametrize("model", ["wan2.1-t2v-14b", "wan2.2-ti2v-5b"])
def test_vae_decodes_one_latent_frame_per_chunk(model: str) -> None:
    vae = tiny(model, "vae")
    calls = []
    hook = vae.decoder.conv_in.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[2]))
    try:
        with torch.no_grad():
            vae.decode(torch.randn(1, vae.cfg.z_dim, 3, 2, 2))
    finally:
        hook.remove()
    assert calls == [1, 1, 1]


def test_aliases_resolve() -> None:
    assert get_model("wan2.2").name == "wan2.2-t2v-a14b"
    assert get_model("wan2.1-1.3b").name == "wan2.1-t2v-1.3b"
    spec = get_model("wan2.2-t2v-a14b")
    assert spec.dits == ("transformer", "transformer_2") and spec.boundary == 0.875


@pytest.mark.parametrize("model", WAN_MODELS)
def test_defaults_are_valid(model: str) -> None:
    Request.for_model(get_model(model))


@pytest.mark.parametrize(("model", "override", "message"), [
    ("wan2.2-t2v-a14b", {"frames": 80}, r"frames must be 4·k\+1 \(e.g. 81\), got 80"),
    ("wan2.1-t2v-1.3b", {"height": 488}, "height must be a multiple of 16"),
    ("wan2.2-i2v-a14b", {"width": 1270}, "width must be a multiple of 16"),
    ("wan2.2-ti2v-5b", {"height": 720}, "height must be a multiple of 32"),
])
def test_validate_states_the_rule(model: str, override: dict[str, int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        Request.for_model(get_model(model), **override)
