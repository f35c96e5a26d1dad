"""Issue 14: what `resbench calibrate` measures at the pipelines' own shapes, and how the
cost model and the simulator use it (attention curve, conv and wide-attention workspaces,
the kernel mix behind `elementwise_efficiency`). The GPU runs are in test_calibrate.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from resbench import calibrate_shapes, kernel_mix
from resbench.cost import CostModel
from resbench.devices.sim import SimDevice
from resbench.errors import DoesNotFitError, InputError
from resbench.hardware import PRESETS, load_profile, profile_dict, save_profile
from resbench.schedule import UnitCall

BASE = dataclasses.replace(PRESETS["h100-80g"], attention_flops_per_s=100e12,
                           attention_half_flops=0.0)
CURVE = ((1e9, 200e12), (1e11, 400e12), (1e13, 300e12))


def _call(*, attention: int = 0, conv: int = 0, conv_fp32: int = 0,
          activation: int = 0) -> UnitCall:
    return UnitCall(index=0, component="vae", unit="decoder.mid_block", stage="decode",
                    step=-1, gemm_flops=0, attention_flops=attention, conv_flops=conv,
                    memory_bytes=0, op_count=0, activation_bytes=activation,
                    conv_fp32_flops=conv_fp32)


def test_attention_curve_is_interpolated_in_log_flops_and_held_beyond() -> None:
    cost = CostModel(dataclasses.replace(BASE, attention_curve=CURVE))
    assert cost.modelled_time_s(0, 1e11, 0, 0, 0) == pytest.approx(1e11 / 400e12)
    assert cost.modelled_time_s(0, 1e10, 0, 0, 0) == pytest.approx(1e10 / 300e12)  # halfway
    assert cost.modelled_time_s(0, 1e14, 0, 0, 0) == pytest.approx(1e14 / 300e12)
    # below the curve's first point: the (peak, half) fit
    assert cost.modelled_time_s(0, 1e8, 0, 0, 0) == pytest.approx(1e8 / 100e12)
    assert CostModel(BASE).modelled_time_s(0, 1e11, 0, 0, 0) == pytest.approx(1e11 / 100e12)


def test_optional_fields_round_trip_and_presets_leave_them_out(tmp_path: Path) -> None:
    profile = dataclasses.replace(
        BASE, attention_curve=CURVE, conv_workspace_bytes=123_456_789,
        attention_workspace_bytes_per_flop=0.25,
        provenance_pairs=(*BASE.provenance_pairs, ("attention_curve", "measured")))
    loaded = load_profile(save_profile(profile, tmp_path / "card.toml"))
    assert loaded == profile and loaded.provenance["attention_curve"] == "measured"
    assert "attention_curve" not in profile_dict(PRESETS["h200-141g"])


@pytest.mark.parametrize("changes, match", [
    ({"attention_curve": ((1e9, 2e14), (1e8, 3e14))}, "attention_curve point 1"),
    ({"attention_curve": ((1e9, -1.0),)}, "attention_curve point 0"),
    ({"conv_workspace_bytes": -1}, "conv_workspace_bytes must be"),
    ({"attention_workspace_bytes_per_flop": float("nan")}, "attention_workspace"),
])
def test_bad_optional_fields_are_input_errors(changes: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        dataclasses.replace(BASE, **changes)


def test_the_simulator_charges_measured_workspaces_on_decoder_calls() -> None:
    profile = dataclasses.replace(BASE, conv_workspace_bytes=1000,
                                  attention_workspace_bytes_per_flop=0.5,
                                  conv_fp32_workspace_bytes=2000,
                                  attention_fp32_workspace_bytes_per_flop=2.0,
                                  fragmentation_fraction=0.0)
    dev = SimDevice(profile, unit_bytes={}, call_times_s=[0.0], capacity_bytes=10_000)
    assert dev.working_bytes(_call(conv_fp32=10, activation=5)) == 2005
    assert dev.working_bytes(_call(conv_fp32=10, attention=100, activation=5)) == 2205
    assert dev.working_bytes(_call(conv=10, attention=100, activation=5)) == 1055
    assert dev.working_bytes(_call(attention=100, activation=5)) == 5  # a DiT's attention
    dev.compute_begin(_call(conv=10, attention=100, activation=5))
    assert dev.used_bytes() == 1055
    dev.compute_end(_call(conv=10, attention=100, activation=5))
    assert dev.used_bytes() == 0
    with pytest.raises(DoesNotFitError):
        dev.compute_begin(_call(conv=10, activation=9_500))


def test_kernel_mix_bytes_are_the_recorders_and_scale_with_tokens() -> None:
    mix = next(m for m in kernel_mix.MIXES if m.name == "wan2.2-block-7800")
    small, large = kernel_mix.counted_bytes(mix, 0.01), kernel_mix.counted_bytes(mix, 0.02)
    assert 1.9 < large / small < 2.1
    out = kernel_mix.run(mix, mix.inputs("cpu", 0.01))
    assert out.shape == (1, 78, 5120) and out.dtype == torch.bfloat16


def test_shape_calibration_runs_its_loops_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loops, shapes and field arithmetic, on CPU with a fixed clock (no GPU here)."""
    monkeypatch.setattr(calibrate_shapes, "_require_cuda", lambda: torch)
    monkeypatch.setattr(calibrate_shapes, "_time_events", lambda fn, samples: (fn(), 1e-3)[1:] * 5)
    monkeypatch.setattr(calibrate_shapes, "_time_graph",
                        lambda fn, samples, inner: (fn(), 2e-3)[1:] * 5)
    monkeypatch.setattr(calibrate_shapes, "_extra_bytes", lambda torch, fn, out: 4096)
    monkeypatch.setattr(calibrate_shapes, "GEMM_SHAPES",
                        (("a", 8, 16, 32, 3), ("a", 4, 16, 16, 1)))
    gemm = calibrate_shapes.calibrate_gemm_shapes(device="cpu")["fields"]["gemm_flops_per_s"]
    assert gemm == pytest.approx(2 * (3 * 8 * 16 * 32 + 4 * 16 * 16) / (4 * 2e-3))
    monkeypatch.setattr(calibrate_shapes, "ATTENTION_SHAPES",
                        (("wan", 2, 16, 64), ("flux", 2, 16, 64), ("wan", 2, 16, 128)))
    monkeypatch.setattr(calibrate_shapes, "WAN_DECODER_CONVS",
                        ((4, 4, 1, 6, 8, 10), (4, 4, 2, 12, 16, 6)))
    monkeypatch.setattr(calibrate_shapes, "FLUX_DECODER_CONVS", ((4, 4, 8),))
    monkeypatch.setattr(calibrate_shapes, "WIDE_ATTENTION", (("vae", 8, 32, "float32"),))
    monkeypatch.setattr(calibrate_shapes, "FLUX_DECODER_CONVS", ((4, 4, 8),))
    curve = calibrate_shapes.calibrate_attention_curve(device="cpu")["fields"]["attention_curve"]
    assert [f for f, _ in curve] == [4 * 2 * 64 * 64 * 16, 4 * 2 * 128 * 128 * 16]
    assert curve[0][1] == pytest.approx(4 * 2 * 64 * 64 * 16 / 2e-3)
    eff = calibrate_shapes.calibrate_elementwise(1e12, device="cpu", scale=0.002)
    assert 0 < eff["fields"]["elementwise_efficiency"] <= 4
    dec = calibrate_shapes.calibrate_decoder(device="cpu")
    flops = 2 * 16 * 27 * (10 * 6 * 8 + 6 * 2 * 12 * 16)
    assert dec["fields"]["conv_fp32_flops_per_s"] == pytest.approx(flops / (16 * 1e-3))
    assert dec["fields"]["conv_workspace_bytes"] == dec["fields"]["conv_fp32_workspace_bytes"]
    assert dec["fields"]["conv_workspace_bytes"] == 4096
    assert dec["fields"]["attention_fp32_workspace_bytes_per_flop"] == pytest.approx(
        4096 / (4 * 32 * 32 * 8))
    assert dec["fields"]["attention_workspace_bytes_per_flop"] == 0.0  # no bf16 shape here


def test_workspace_fields_split_by_precision_from_samples(tmp_path: Path) -> None:
    import json

    samples = {"workspace_bytes": {
        "conv3d_fp32_96x480x832x4": 1500, "conv3d_fp32_384x60x104x1": 60,
        "conv2d_bf16_256x1024x1024": 1000, "attention_flux-vae-mid_bfloat16": 4 * 16384**2 * 512,
        "attention_wan-vae-mid_float32": 0}}
    (tmp_path / "card.samples.json").write_text(json.dumps(samples))
    p = calibrate_shapes.with_workspace_fields(BASE, tmp_path / "card.samples.json")
    assert (p.conv_workspace_bytes, p.conv_fp32_workspace_bytes) == (1000, 1500)
    assert p.attention_workspace_bytes_per_flop == pytest.approx(1.0)
    assert p.attention_fp32_workspace_bytes_per_flop == 0.0
    assert p.provenance["conv_fp32_workspace_bytes"] == "measured"
    (tmp_path / "old.samples.json").write_text("{}")
    with pytest.raises(InputError, match="no workspace_bytes"):
        calibrate_shapes.with_workspace_fields(BASE, tmp_path / "old.samples.json")
