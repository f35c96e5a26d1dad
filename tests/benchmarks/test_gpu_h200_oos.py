"""benchmarks/gpu_h200_oos.py: the report's arithmetic on hand examples, and `measure`'s
plumbing run on the CPU device on three of the committed pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.gpu_fidelity_report import kendall_tau
from benchmarks.gpu_h200_oos import PREDICTIONS, ROOT, main
from benchmarks.gpu_h200_oos_report import goals, joined, ordered_pairs, ordering, write_report


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


def test_measure_dry_run_on_the_cpu_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the schedule cache (runs/schedules) goes here
    committed = pd.read_csv(ROOT / PREDICTIONS)
    fits = "flux.1-dev-1024x1024x1s8-full-all-resident"  # budget None: the whole device
    no_fit = "wan2.2-480x832x17s4-48GB-all-resident"  # 69 GB of weights under 48 GB
    tuned = committed[(committed.model == "flux.1-dev")
                      & committed.plan_source.str.endswith(".toml")].pair_id.iloc[0]
    with pytest.raises(SystemExit, match="does not exist"):
        main(["measure", "--device", "cpu", "--predictions", str(tmp_path / "none.csv"),
              "--out", str(tmp_path)])

    main(["measure", "--device", "cpu", "--scale", "0.02", "--out", str(tmp_path / "out"),
          "--pairs", ",".join([no_fit, tuned, fits])])
    rows = {r["pair_id"]: r for r in csv.DictReader((tmp_path / "out" /
                                                      "gpu_h200_oos_measured.csv").open())}
    in_file = [p for p in committed.pair_id if p in (no_fit, tuned, fits)]
    assert list(rows) == in_file and in_file[-1] == no_fit  # by model, in the file's order
    assert rows[fits]["status"] == "ok", rows[fits]["message"]
    assert float(rows[fits]["latency_s"]) > 0 and int(rows[fits]["peak_allocated_bytes"]) > 0
    assert all(r["request_run"].startswith("32x32") and r["schedule"] for r in rows.values())
    assert rows[no_fit]["status"] == "no_fit"
    assert rows[no_fit]["failure"] == "DoesNotFitError"
    # a tuned plan read from its committed file ran; at scale 0.02 it may or may not fit
    assert rows[tuned]["status"] in ("ok", "no_fit"), rows[tuned]["message"]

    out = write_report(ROOT / PREDICTIONS, tmp_path / "out" / "gpu_h200_oos_measured.csv",
                       tmp_path / "report.md")
    text = out.read_text()
    assert "out of sample" in text and f"| {no_fit} |" in text and "not run" in text
