"""benchmarks/gpu_h200_oos.py: the report's arithmetic on hand examples."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.gpu_fidelity_report import kendall_tau
from benchmarks.gpu_h200_oos_report import goals, joined, ordered_pairs, ordering


def test_kendall_tau_b_by_hand() -> None:
    # 6 pairs: (1,2) and (2,3)... one discordant pair (b, c): (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # x ties (a, b), y ties (b, c); the other 4 pairs concordant: 4 / sqrt(5 * 5)
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_ordered_pairs_skip_real_near_ties_and_count_simulated_ties_as_wrong() -> None:
    real = [10.0, 10.1, 11.0, 12.0]  # (a, b) 1 % apart: not an order
    sim = [5.0, 6.0, 7.0, 6.5]  # (c, d) reversed
    assert ordered_pairs(real, sim) == (5, 4)
    assert ordered_pairs([10.0, 11.0], [5.0, 5.0]) == (1, 0)


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    pred = pd.DataFrame({
        "pair_id": ["a", "b", "c", "d", "e"], "request": ["r1", "r1", "r1", "r2", "r2"],
        "pred_fits": [True, True, True, False, True],
        "pred_latency_s": [11.0, 9.5, 12.0, None, 1.0],
        "pred_peak_device_bytes": [100.0, 204.0, 50.0, None, 10.0], "schedule": ["s1"] * 5})
    meas = pd.DataFrame({
        "pair_id": ["a", "b", "c", "d", "e"], "status": ["ok", "ok", "ok", "no_fit", "no_fit"],
        "latency_s": [10.0, 10.0, 12.5, None, None],
        "peak_allocated_bytes": [100.0, 200.0, 50.0, None, None],
        "schedule": ["s1", "s1", "s2", "s1", "s1"]})
    return pred, meas


def test_joined_errors_fit_agreement_and_goals() -> None:
    f = joined(*_frames())
    assert list(f.timed) == [True, True, True, False, False]
    assert f.latency_err_pct[:3].tolist() == pytest.approx([10.0, -5.0, -4.0])
    assert f.peak_err_pct[:3].tolist() == pytest.approx([0.0, 2.0, 0.0])
    assert list(f.fit_agrees) == [True, True, True, True, False]
    assert list(f.schedule_matches) == [True, True, False, True, True]
    order = ordering(f)
    # r1 real 10, 10, 12.5: (a, c) and (b, c) apart, both ordered; (a, b) a real tie
    assert order.set_index("request").loc["r1", ["pairs_apart", "ordered"]].tolist() == [2, 2]
    g = goals(f, order).set_index("goal")
    assert g.loc["median |latency error| %", "value"] == pytest.approx(5.0)
    assert g.met.tolist() == [False, False, True, True]  # median 5, max 10, peak 2 %, 2 / 2
