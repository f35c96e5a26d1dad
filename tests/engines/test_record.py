from __future__ import annotations

from collections import Counter

import pytest
import torch

from resbench.engines.build import build_pipeline
from resbench.engines.catalog import get_engine_model
from resbench.engines.record import DiffusersRecorder, record_pipeline, record_schedule
from resbench.engines.run import run_pipeline
from resbench.engines.units import residency_units
from resbench.models.base import REST
from resbench.pipeline import Request
from tests.engines.helpers import FLUX_TINY, WAN_TINY

WAN = get_engine_model("wan2.2-t2v-a14b")
# 64x64x5 → Wan2.1 VAE latents 16 x 2 x 8 x 8 → (1,2,2) patches: 2 x 4 x 4 = 32 tokens.
WAN_REQUEST = Request(height=64, width=64, frames=5, steps=8, guidance=4.0)
WAN_TOKENS, TEXT_TOKENS = 32, 512
WAN_BLOCKS = [f"blocks.{i}" for i in range(3)]


def denoise_experts(schedule) -> dict[int, set[str]]:
    steps: dict[int, set[str]] = {}
    for c in schedule.calls:
        if c.stage == "denoise":
            steps.setdefault(c.step, set()).add(c.component)
    return steps


@pytest.fixture(scope="module")
def wan_schedule():
    return record_schedule(WAN.name, WAN_REQUEST, overrides=WAN_TINY)


def test_wan_schedule_has_the_pipeline_call_structure(wan_schedule):
    s = wan_schedule
    assert s.stage_order == ("text_encode", "denoise", "decode")
    counts = Counter((c.stage, c.component) for c in s.calls)
    # umT5 runs twice (prompt, negative prompt), each call: rest + 2 layers.
    assert counts[("text_encode", "text_encoder")] == 2 * 3
    # Expert switch (shipped UniPC, flow_shift 3, 8 steps): u_i = 1 - 0.999 i/8 and
    # t_i = 1000 * 3u / (1 + 2u); the high-noise transformer runs while t >= 0.875 * 1000,
    # i.e. u >= 0.875 / (3 - 2 * 0.875) = 0.7, i.e. i <= 2.4: steps 0-2, then transformer_2.
    assert denoise_experts(s) == {**{i: {"transformer"} for i in range(3)},
                                  **{i: {"transformer_2"} for i in range(3, 8)}}
    # Each step: two passes (cond, uncond), each rest + 3 blocks.
    assert counts[("denoise", "transformer")] == 3 * 2 * 4
    assert counts[("denoise", "transformer_2")] == 5 * 2 * 4
    step0 = [c.unit for c in s.calls if c.step == 0]
    assert step0 == [REST, *WAN_BLOCKS] * 2
    # The causal VAE decodes latent frame by frame: 2 latent frames x (mid + 4 up blocks).
    decode = [c.unit for c in s.calls if c.stage == "decode"]
    assert decode[0] == REST
    assert Counter(decode[1:]) == {u: 2 for u in ["decoder.mid_block", *(
        f"decoder.up_blocks.{i}" for i in range(4))]}
    assert [c.index for c in s.calls] == list(range(len(s.calls)))


def test_boundary_and_shift_move_the_switch():
    # flow_shift 12: u >= 0.875 / (12 - 11 * 0.875) = 0.368, i <= 5.06: six high-noise steps.
    s = record_schedule(WAN.name, WAN_REQUEST, overrides={
        **WAN_TINY, "scheduler": {"flow_shift": 12.0}})
    assert [i for i, e in denoise_experts(s).items() if e == {"transformer"}] == list(range(6))
    # Without a boundary the pipeline runs `transformer` only.
    s = record_schedule(WAN.name, WAN_REQUEST, overrides={
        **WAN_TINY, "pipeline": {"boundary_ratio": None}})
    assert set().union(*denoise_experts(s).values()) == {"transformer"}


def test_without_cfg_one_pass_and_one_prompt():
    request = Request(height=64, width=64, frames=5, steps=2, guidance=4.0, cfg=False)
    s = record_schedule(WAN.name, request, overrides=WAN_TINY)
    counts = Counter((c.stage, c.component) for c in s.calls)
    assert counts[("text_encode", "text_encoder")] == 3
    assert sum(1 for c in s.calls if c.stage == "denoise") == 2 * 4


def wan_block_flops(tokens: int, text: int, dim: int, ffn: int) -> int:
    """GEMM + attention FLOPs of one Wan block call, counted from its structure (2 per MAC).

    Self-attention: q, k, v, o projections (4 x 2·N·D²) and QKᵀ, AV (2 x 2·N²·D).
    Cross-attention: q, o on the tokens (2 x 2·N·D²), k, v on the text (2 x 2·L·D²),
    QKᵀ, AV (2 x 2·N·L·D). FFN: D→F→D (2 x 2·N·D·F). Time modulation is a broadcast add.
    """
    n, t, d, f = tokens, text, dim, ffn
    self_attn = 4 * 2 * n * d * d + 2 * 2 * n * n * d
    cross_attn = 2 * 2 * n * d * d + 2 * 2 * t * d * d + 2 * 2 * n * t * d
    return self_attn + cross_attn + 2 * 2 * n * d * f


def test_wan_block_flops_match_the_analytic_count(wan_schedule):
    expected = wan_block_flops(WAN_TOKENS, TEXT_TOKENS, dim=2 * 16, ffn=64)
    blocks = [c for c in wan_schedule.calls if c.stage == "denoise" and c.unit != REST]
    assert len(blocks) == 8 * 2 * 3
    for c in blocks:
        assert abs(c.flops - expected) <= 0.05 * expected, (c.unit, c.flops, expected)
        assert c.attention_flops > 0  # SDPA counted as attention, not as bmm


def test_full_size_wan_block_flops_match_the_analytic_count():
    # One step at 480x832x81 on the full-size experts (meta): 21 x 30 x 52 = 32,760 tokens.
    # To latents only: the 81-frame VAE decode (27 of its 30 s on meta) is not under test.
    request = Request(height=480, width=832, frames=81, steps=1, guidance=4.0)
    pipe = build_pipeline(WAN.name, overrides={"pipeline": {"boundary_ratio": None}})
    s = record_pipeline(pipe, WAN, request, output_type="latent")
    block = next(c for c in s.calls if c.component == "transformer" and c.unit == "blocks.0")
    expected = wan_block_flops(32_760, TEXT_TOKENS, dim=5120, ffn=13824)
    assert abs(block.flops - expected) <= 0.05 * expected
    assert sum(1 for c in s.calls if c.component == "transformer") == 2 * 41


def flux_block_flops(image: int, text: int, dim: int) -> tuple[int, int]:
    """(double, single) block FLOPs of FLUX, from the structure (2 per MAC, B = 1).

    Double: AdaLN-Zero on the pooled vector for both streams (2 x 2·D·6D); q, k, v and out
    for each stream (4 x 2·S·D² over the N + L tokens); joint attention (2 x 2·(N+L)²·D);
    GELU MLPs D→4D→D for both streams (2 x 2·(N+L)·D·4D). Single: AdaLN (2·D·3D); q, k, v
    and the MLP's D→4D on all tokens (2·S·7D²); the output projection 5D→D (2·S·5D²);
    attention (2 x 2·S²·D).
    """
    s, d = image + text, dim
    double = 2 * 2 * d * 6 * d + 4 * 2 * s * d * d + 2 * 2 * s * s * d + 2 * 2 * s * d * 4 * d
    single = 2 * d * 3 * d + 2 * s * 7 * d * d + 2 * s * 5 * d * d + 2 * 2 * s * s * d
    return double, single


def test_flux_schedule_and_block_flops():
    request = Request(height=64, width=64, steps=3, guidance=3.5, cfg=False)
    s = record_schedule("flux.1-dev", request, overrides=FLUX_TINY)
    counts = Counter((c.stage, c.component) for c in s.calls)
    assert counts[("text_encode", "text_encoder")] == 3  # CLIP: rest + 2 layers, one prompt
    assert counts[("text_encode", "text_encoder_2")] == 3
    assert counts[("denoise", "transformer")] == 3 * (1 + 2 + 3)  # distilled guidance: 1 pass
    assert counts[("decode", "vae")] == 1 + 1 + 4
    # 64x64 → 8x8 latents (VAE factor 8) → 2x2 packing: 16 image tokens; 512 T5 tokens.
    double, single = flux_block_flops(16, 512, dim=32)
    for c in s.calls:
        if c.unit.startswith("transformer_blocks."):
            assert abs(c.flops - double) <= 0.05 * double
        elif c.unit.startswith("single_transformer_blocks."):
            assert abs(c.flops - single) <= 0.05 * single


def test_schedule_describes_the_pipeline_units(wan_schedule):
    pipe = build_pipeline(WAN.name, overrides=WAN_TINY)
    expected = [u.info() for r in WAN.components for u in residency_units(pipe)[r.name]]
    assert list(wan_schedule.units) == expected
    assert wan_schedule.kinds == {"text_encoder": "text_encoder", "transformer": "dit",
                                  "transformer_2": "dit", "vae": "vae"}
    assert [(u.stage, u.component, u.phase) for u in wan_schedule.uses] == [
        ("text_encode", "text_encoder", 0), ("denoise", "transformer", 0),
        ("denoise", "transformer_2", 1), ("decode", "vae", 0)]
    assert wan_schedule.request["steps"] == 8
    for c in wan_schedule.calls:
        wan_schedule.unit(c.component, c.unit)  # every call names a known unit


def hook_state(pipe) -> list[object]:
    state: list[object] = []
    for name, m in pipe.components.items():
        if isinstance(m, torch.nn.Module):
            state += [(name, len(mod._forward_pre_hooks), len(mod._forward_hooks),
                       "forward" in mod.__dict__) for mod in m.modules()]
            state.append(sorted(k for k in ("encode", "decode") if k in m.__dict__))
    state.append("set_timesteps" in pipe.scheduler.__dict__)
    return state


def test_recording_leaves_nothing_behind():
    pipe = build_pipeline(WAN.name, overrides=WAN_TINY)
    before = hook_state(pipe)
    first = record_pipeline(pipe, WAN, WAN_REQUEST)
    assert hook_state(pipe) == before
    assert record_pipeline(pipe, WAN, WAN_REQUEST).calls == first.calls


def test_hooks_do_not_change_outputs():
    request = Request(height=32, width=32, frames=5, steps=3, guidance=4.0)
    pipe = build_pipeline(WAN.name, overrides=WAN_TINY, device="cpu", seed=0)
    torch.manual_seed(0)
    plain = run_pipeline(pipe, WAN, request)
    with DiffusersRecorder(pipe, WAN, residency_units(pipe)) as recorder:
        torch.manual_seed(0)
        hooked = run_pipeline(pipe, WAN, request, callback_on_step_end=recorder.on_step_end)
    assert torch.equal(plain, hooked)
    # The hooks saw the same structure as a meta recording: 3 steps x 2 passes x 4 units.
    assert sum(1 for c in recorder.calls if c is not None and c.stage == "denoise") == 24
