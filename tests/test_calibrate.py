from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resbench.calibrate import Measurement, calibrate, fit_peak_half
from resbench.errors import InputError
from resbench.hardware import NUMERIC_FIELDS, load_profile


def test_measurement_keeps_samples_median_and_spread() -> None:
    m = Measurement("h2d_pinned", 1000, 1000.0, (1.0, 2.0, 4.0, 2.0, 2.0))
    assert m.median_s == 2.0
    assert m.spread == pytest.approx(1.5)
    assert m.rate == 500.0
    assert m.record()["samples_s"] == (1.0, 2.0, 4.0, 2.0, 2.0)


def test_fit_recovers_peak_and_half_from_exact_times() -> None:
    peak, half = 700e12, 2.5e9
    points = [Measurement("gemm", 0, f, ((f + half) / peak,) * 5)
              for f in (3e7, 3e8, 2e9, 1.7e10, 1.4e11, 1.1e12)]
    got_peak, got_half = fit_peak_half(points)
    assert got_peak == pytest.approx(peak, rel=1e-6)
    assert got_half == pytest.approx(half, rel=1e-6)


def test_calibrate_refuses_without_a_gpu(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="calibrate needs a CUDA GPU; none found"):
        calibrate(tmp_path / "card.toml")


@pytest.mark.gpu
def test_quick_calibration_writes_a_measured_profile(tmp_path: Path) -> None:
    out = tmp_path / "card.toml"
    profile = calibrate(out, quick=True)
    assert load_profile(out) == profile
    measured = {f for f, kind in profile.provenance.items() if kind == "measured"}
    assert {"h2d_pinned_bytes_per_s", "gemm_flops_per_s", "hbm_bytes_per_s",
            "kernel_launch_s", "usable_fraction"} <= measured
    assert set(NUMERIC_FIELDS) <= set(profile.provenance)
    assert profile.attention_curve and profile.provenance["attention_curve"] == "measured"
    assert 0 < profile.elementwise_efficiency <= 4
    assert profile.provenance["elementwise_efficiency"] == "measured"
    assert profile.memory_capacity_bytes == torch.cuda.mem_get_info()[1]
    assert 1e9 < profile.h2d_pinned_bytes_per_s < 200e9
    assert profile.gemm_flops_per_s > 10e12
    raw = json.loads(out.with_suffix(".samples.json").read_text())
    assert all(len(m["samples_s"]) >= 5 for m in raw["measurements"])
