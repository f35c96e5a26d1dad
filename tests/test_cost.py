from __future__ import annotations

import dataclasses
import time

import pytest

from resbench.cost import CostModel, class_time_s
from resbench.errors import InputError
from resbench.hardware import PRESETS
from resbench.schedule import UnitCall

# Round numbers so every expected time below can be checked by hand.
CARD = dataclasses.replace(
    PRESETS["h100-80g"],
    gemm_flops_per_s=100e12, gemm_half_flops=1e9,
    attention_flops_per_s=50e12, attention_half_flops=2e9,
    conv_flops_per_s=10e12, conv_half_flops=0.0,
    gemm_fp32_flops_per_s=20e12, conv_fp32_flops_per_s=5e12,
    hbm_bytes_per_s=1e12, elementwise_efficiency=0.5, kernel_launch_s=1e-5,
    h2d_pinned_bytes_per_s=50e9, transfer_latency_s=1e-5,
)


def _call(unit: str = "blocks.0", *, gemm: int = 0, attention: int = 0, conv: int = 0,
          memory: int = 0, ops: int = 0, index: int = 0, component: str = "dit",
          gemm_fp32: int = 0, conv_fp32: int = 0) -> UnitCall:
    return UnitCall(index=index, component=component, unit=unit, stage="denoise", step=0,
                    gemm_flops=gemm, attention_flops=attention, conv_flops=conv,
                    memory_bytes=memory, op_count=ops, activation_bytes=0,
                    gemm_fp32_flops=gemm_fp32, conv_fp32_flops=conv_fp32)


def test_class_time_is_flops_over_throughput() -> None:
    # throughput(f) = peak·f/(f + half): at f = half the class runs at half its peak.
    assert class_time_s(1e9, 1e12, 1e9) == pytest.approx(1e9 / 0.5e12)
    assert class_time_s(9e9, 1e12, 1e9) == pytest.approx(9e9 / 0.9e12)
    assert class_time_s(0, 1e12, 1e9) == 0.0


def test_call_time_by_hand() -> None:
    model = CostModel(CARD)
    call = _call(gemm=9_000_000_000, attention=8_000_000_000, memory=50_000_000, ops=10)
    # gemm (9e9 + 1e9)/1e14 = 1e-4; attention (8e9 + 2e9)/5e13 = 2e-4; conv none;
    # memory (read + written) 5e7/(1e12 · 0.5) = 1e-4; GPU 4e-4 s beats the CPU's
    # 10 ops · 1e-5 = 1e-4 s.
    assert model.call_time_s(call) == pytest.approx(4e-4)


def test_fp32_flops_are_priced_at_their_own_rates() -> None:
    model = CostModel(CARD)
    # fp32 GEMM 4e9/2e13 = 2e-4 and fp32 conv 1e9/5e12 = 2e-4, no fixed cost; bf16 GEMM
    # (9e9 + 1e9)/1e14 = 1e-4: 5e-4 s.
    call = _call(gemm=9_000_000_000, gemm_fp32=4_000_000_000, conv_fp32=1_000_000_000, ops=1)
    assert model.call_time_s(call) == pytest.approx(5e-4)
    assert call.flops == 14_000_000_000
    # The same FLOPs at bf16 rates would cost 5x less: the split is what the model is for.
    as_bf16 = _call(gemm=13_000_000_000, conv=1_000_000_000, ops=1)
    assert model.call_time_s(as_bf16) == pytest.approx((13e9 + 1e9) / 1e14 + 1e9 / 1e13)
    # Calls differing only in their fp32 FLOPs are not merged by the memo.
    times = model.call_times([_call(gemm_fp32=2_000_000_000), _call(conv_fp32=2_000_000_000)])
    assert times == pytest.approx([1e-4, 4e-4])


def test_elementwise_efficiency_scales_memory_time() -> None:
    call = _call(memory=1_000_000_000)
    assert CostModel(CARD).call_time_s(call) == pytest.approx(2e-3)  # 1e9 / (1e12 · 0.5)
    full = dataclasses.replace(CARD, elementwise_efficiency=1.0)
    assert CostModel(full).call_time_s(call) == pytest.approx(1e-3)


def test_small_calls_cost_their_dispatch() -> None:
    model = CostModel(CARD)
    call = _call(gemm=1_000_000, conv=1_000_000, memory=1_000, ops=100)
    gpu_s = (1e6 + 1e9) / 100e12 + 1e6 / 10e12 + 1e3 / 0.5e12
    assert gpu_s < 100 * 1e-5
    assert model.call_time_s(call) == pytest.approx(100 * 1e-5)


def test_override_replaces_the_time_of_that_unit_only() -> None:
    model = CostModel(CARD, overrides={("dit", "blocks.0"): 0.0676})
    busy = dict(gemm=9_000_000_000, ops=10)
    assert model.call_time_s(_call("blocks.0", **busy)) == 0.0676
    assert model.call_time_s(_call("blocks.1", **busy)) == pytest.approx(1e-4)
    assert model.call_time_s(_call("blocks.0", component="vae", **busy)) == pytest.approx(1e-4)
    assert model.call_times([_call("blocks.0"), _call("blocks.1")])[0] == 0.0676


@pytest.mark.parametrize("overrides", [{("dit", "blocks.0"): -1.0},
                                       {("dit", "blocks.0"): float("nan")},
                                       {"dit.blocks.0": 1.0}])
def test_bad_overrides_are_input_errors(overrides: dict) -> None:
    with pytest.raises(InputError):
        CostModel(CARD, overrides=overrides)


def test_transfer_time_uses_the_profile() -> None:
    model = CostModel(CARD)
    assert model.transfer_time_s(100_000_000, "h2d", pinned=True) == pytest.approx(1e-5 + 2e-3)
    assert model.transfer_time_s(0, "h2d") == 0.0


def _schedule_calls(n_steps: int = 40, blocks: int = 40, passes: int = 2) -> list[UnitCall]:
    """A Wan-like denoise loop: 40 steps x 2 CFG passes x 40 blocks + rest ≈ 3,300 calls."""
    calls = []
    for _step in range(n_steps):
        for _ in range(passes):
            for b in range(blocks):
                calls.append(_call(f"blocks.{b}", gemm=19_600_000_000_000,
                                   attention=22_300_000_000_000, memory=3_000_000_000,
                                   ops=60, index=len(calls)))
            calls.append(_call("rest", gemm=10**9, ops=20, index=len(calls)))
    return calls


def test_call_times_match_call_time_and_are_fast_enough_for_the_simulator() -> None:
    calls = _schedule_calls()
    assert len(calls) >= 3_200
    model = CostModel(PRESETS["h100-80g"], overrides={("dit", "rest"): 0.001})
    times = model.call_times(calls)
    assert times == [model.call_time_s(c) for c in calls]
    best = min(_elapsed(lambda: CostModel(PRESETS["h100-80g"]).call_times(calls))
               for _ in range(3))
    # The simulator needs ≥ 2,000 plan evaluations a minute: 30 ms each, all included.
    assert best < 0.01


def _elapsed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.mark.parametrize(("tokens", "measured_s"), [(32_760, 0.0676), (75_600, 0.271)])
def test_h100_preset_reproduces_the_measured_wan_block(tokens: int, measured_s: float) -> None:
    """gpu-h100.md: one Wan2.2-A14B DiT block (dim 5120, FFN 13824, 40 heads, text 512)."""
    dim, ffn, text = 5120, 13824, 512
    # Self-attention q, k, v, o; cross-attention q, o (k, v act on the 512 text tokens); FFN.
    gemm = 2 * tokens * (4 * dim * dim + 2 * dim * dim + 2 * dim * ffn)
    attention = 4 * tokens * tokens * dim + 4 * tokens * text * dim
    call = _call(gemm=gemm, attention=attention, ops=60)
    assert CostModel(PRESETS["h100-80g"]).call_time_s(call) == pytest.approx(measured_s, rel=0.05)
