"""The third out-of-sample round's pairs (`benchmarks/gpu_oos3.py`): new, and its read-back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks import gpu_oos3
from benchmarks.gpu_oos3_report import write_report

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_no_pair_was_in_an_earlier_round() -> None:
    earlier = set(pd.read_csv(RESULTS / "gpu_h200_oos_predictions.csv").pair_id)
    ids = [gpu_oos3.pair_id(s, b, p) for s, p, b in gpu_oos3.PRESET_PAIRS]
    assert len(ids) == len(set(ids)) and not set(ids) & earlier
    shapes = {s for s, _, _ in gpu_oos3.PRESET_PAIRS} | {s for s, _, _ in gpu_oos3.TUNED_CELLS}
    assert shapes == set(gpu_oos3.SHAPES)
    budgets = [gpu_oos3.budget_bytes(b) for _, _, b in gpu_oos3.PRESET_PAIRS]
    assert None in budgets and min(b for b in budgets if b) == 16 * 10**9
    tuned = sum(n for _, _, n in gpu_oos3.TUNED_CELLS)
    assert len(ids) + tuned >= 30


def test_report_joins_predictions_and_measurements(tmp_path: Path) -> None:
    common = {"model": "flux.1-dev", "request": "r", "schedule": "abc", "pred_note": ""}
    pred = pd.DataFrame([
        {**common, "pair_id": "a", "plan": "p1", "pred_fits": True, "pred_fits_device": True,
         "pred_latency_s": 1.0, "pred_peak_device_bytes": 10e9},
        {**common, "pair_id": "b", "plan": "p2", "pred_fits": True, "pred_fits_device": True,
         "pred_latency_s": 2.0, "pred_peak_device_bytes": 5e9},
        {**common, "pair_id": "c", "plan": "p3", "pred_fits": False, "pred_fits_device": False,
         "pred_latency_s": None, "pred_peak_device_bytes": None},
    ])
    meas = pd.DataFrame([
        {"pair_id": "a", "status": "ok", "schedule": "abc", "latency_s": 1.1,
         "peak_allocated_bytes": 10e9, "peak_reserved_bytes": 11e9, "message": None},
        {"pair_id": "b", "status": "ok", "schedule": "abc", "latency_s": 2.0,
         "peak_allocated_bytes": 5.5e9, "peak_reserved_bytes": 6e9, "message": None},
        {"pair_id": "c", "status": "no_fit", "failure": "DeviceOOMError", "schedule": "abc",
         "message": "out of memory"},
    ])
    pred.to_csv(tmp_path / "pred.csv", index=False)
    meas.to_csv(tmp_path / "meas.csv", index=False)
    text = write_report(tmp_path / "pred.csv", tmp_path / "meas.csv", tmp_path / "r.md").read_text()
    assert "| a | p1 | fits | ran | 1.000 / 1.100 | -9.1 |" in text
    assert "| r | 2 | 1 | 1 | 1.00 | 1.00 |" in text
    assert "fit / no-fit agrees on 3 of 3" in text
