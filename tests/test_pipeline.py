from __future__ import annotations

import time

import pytest
import torch

from resbench.errors import InputError
from resbench.models import get_model
from resbench.pipeline import Request, flow_sigmas, step_plan
from resbench.record import record_schedule


def test_wan22_t2v_expert_split_is_26_high_14_low() -> None:
    spec = get_model("wan2.2")
    plan = step_plan(spec, Request.for_model(spec, steps=40))
    experts = [dit for _, dit, _, _ in plan]
    assert experts == ["transformer"] * 26 + ["transformer_2"] * 14


def test_wan22_i2v_expert_split_is_15_high_25_low() -> None:
    spec = get_model("wan2.2-i2v-a14b")
    experts = [dit for _, dit, _, _ in step_plan(spec, Request.for_model(spec, steps=40))]
    assert experts == ["transformer"] * 15 + ["transformer_2"] * 25


def test_sigmas_shifted_and_end_at_zero() -> None:
    sig = flow_sigmas(4, 1.0)
    assert sig == pytest.approx([0.999, 0.74925, 0.4995, 0.24975, 0.0])


@pytest.mark.parametrize("overrides, rule", [
    ({"frames": 80}, r"frames must be 4·k\+1"),
    ({"width": 830}, "width must be a multiple of 16"),
    ({"steps": 0}, "steps must be a positive integer"),
])
def test_requests_the_model_cannot_take(overrides, rule) -> None:
    with pytest.raises(InputError, match=rule):
        Request.for_model(get_model("wan2.2"), **overrides)


def test_image_models_take_one_frame() -> None:
    with pytest.raises(InputError, match="frames must be 1"):
        Request.for_model(get_model("flux"), frames=5)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(InputError, match="did you mean wan2.2"):
        get_model("wan2.3")


@pytest.fixture(scope="module")
def wan_schedule():
    spec = get_model("wan2.2")
    request = Request.for_model(spec, height=480, width=832, frames=81, steps=40)
    start = time.perf_counter()
    schedule = record_schedule(spec, request)
    return schedule, time.perf_counter() - start


def test_full_size_schedule_has_every_dit_call_split_at_the_boundary(wan_schedule) -> None:
    schedule, _ = wan_schedule
    frame = schedule.calls_frame()
    blocks = frame[frame.unit.str.startswith("blocks.") & frame.component.str.startswith("transformer")]
    # steps × CFG passes × blocks, split 26 / 14 between the experts
    assert (blocks.component == "transformer").sum() == 26 * 2 * 40
    assert (blocks.component == "transformer_2").sum() == 14 * 2 * 40
    assert blocks[blocks.component == "transformer"].step.max() == 25
    assert blocks[blocks.component == "transformer_2"].step.min() == 26
    assert list(schedule.stage_order) == ["text_encode", "denoise", "decode"]
    assert all(a.index == i for i, a in enumerate(schedule.calls))


def test_dit_block_flops_match_the_analytic_count(wan_schedule) -> None:
    schedule, _ = wan_schedule
    call = next(c for c in schedule.calls if c.component == "transformer" and c.unit == "blocks.1")
    tokens, text, dim, ffn = 32_760, 512, 5120, 13_824
    analytic = (2 * tokens * 4 * dim * dim + 4 * tokens * tokens * dim  # self-attention
                + 2 * tokens * 2 * dim * dim + 2 * text * 2 * dim * dim + 4 * tokens * text * dim
                + 2 * tokens * 2 * dim * ffn)
    assert call.flops == pytest.approx(analytic, rel=0.05)


def test_schedule_units_have_real_sizes(wan_schedule) -> None:
    schedule, _ = wan_schedule
    block = schedule.unit("transformer", "blocks.0")
    assert block.params == 351_394_304 and block.weight_bytes == 2 * 351_394_304
    assert schedule.component_bytes("transformer") == 2 * 14_288_491_584


def test_recording_allocates_no_weights() -> None:
    spec = get_model("wan2.2")
    from resbench.record import build_meta_components

    for module in build_meta_components(spec).values():
        assert all(t.is_meta for t in [*module.parameters(), *module.buffers()])


def test_cpu_tiny_run_matches_across_seeds_only_when_equal() -> None:
    from resbench.models.base import build_component, materialize
    from resbench.pipeline import Pipeline

    spec = get_model("wan2.1-t2v-1.3b")
    torch.set_num_threads(1)
    comps = {c.name: materialize(build_component(c, 0.05), "cpu", seed=0).float() for c in spec.components}
    pipe = Pipeline(spec, comps, dtype=torch.float32, scale=0.05)
    req = Request(height=32, width=32, frames=5, steps=2, guidance=5.0)
    a, b = pipe.run(req), pipe.run(req)
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe.run(Request(height=32, width=32, frames=5, steps=2, guidance=5.0, seed=1)))


def test_fp32_gemms_and_convs_are_split_off(wan_schedule) -> None:
    """Wan2.2 as deployed (diffusers) runs only its time embedder in fp32, once per sample:
    2·(256·5120 + 5120·5120) FLOPs (the original's per-token fp32 embedding, 12.2 TFLOP a
    forward at 480x832x81 in GPU campaign 2, is `wan2.2-t2v-a14b-orig`'s); the VAE's convs are
    fp32; the DiT blocks are bf16."""
    schedule, _ = wan_schedule
    calls = schedule.calls
    rest = next(c for c in calls if c.component == "transformer" and c.unit == "rest")
    assert rest.gemm_fp32_flops == 2 * (256 * 5120 + 5120 * 5120)
    assert rest.gemm_flops > 100 * rest.gemm_fp32_flops
    block = next(c for c in calls if c.component == "transformer" and c.unit == "blocks.1")
    assert block.gemm_fp32_flops == 0 and block.conv_fp32_flops == 0
    vae = [c for c in calls if c.component == "vae"]
    assert sum(c.conv_fp32_flops for c in vae) > 1e14
    assert sum(c.conv_flops + c.gemm_flops for c in vae) == 0
    assert rest.flops == (rest.gemm_flops + rest.gemm_fp32_flops + rest.attention_flops
                          + rest.conv_flops + rest.conv_fp32_flops)


def test_memory_bound_ops_count_bytes_read_and_written() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from resbench.record import _MemoryMode

    mem = _MemoryMode()
    with FlopCounterMode(display=False) as flops, mem:
        x = torch.empty(100, 10, device="meta")
        bias = torch.empty(10, device="meta")
        _ = x + bias  # reads 4,000 + 40, writes 4,000
        _ = x[:50] * 2.0  # a slice reads its own 2,000 bytes, writes 2,000
        a, b = torch.empty(64, 32, device="meta"), torch.empty(32, 16, device="meta")
        _ = a @ b  # fp32 GEMM: 2·64·32·16 FLOPs, no memory bytes
        _ = a.bfloat16() @ b.bfloat16()  # two casts (read 8,192 + 2,048, write half) and a bf16 GEMM
        w = torch.empty(4, 3, 3, 3, device="meta")
        _ = torch.nn.functional.conv2d(torch.empty(1, 3, 8, 8, device="meta"), w)
    assert mem.fp32_flops["gemm"] == 2 * 64 * 32 * 16
    assert mem.fp32_flops["conv"] == 2 * 4 * 3 * 9 * 6 * 6
    gemm_total = sum(n for op, n in flops.flop_counts["Global"].items() if "mm" in str(op))
    assert gemm_total == 2 * (2 * 64 * 32 * 16)  # the bf16 one is the rest
    casts = (8192 + 4096) + (2048 + 1024)
    assert mem.memory_bytes == (4040 + 4000) + (2000 + 2000) + casts
