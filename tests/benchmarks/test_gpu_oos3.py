"""The third out-of-sample round's read-back (`benchmarks/gpu_oos3.py` report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks import gpu_oos3
from benchmarks.oos_report import write_report


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
    text = write_report(gpu_oos3.ROUND3, tmp_path / "pred.csv", tmp_path / "meas.csv", tmp_path / "r.md").read_text()
    assert "| a | p1 | fits | ran | 1.000 / 1.100 | -9.1 |" in text
    assert "| r | 2 | 1 | 1 | 1.00 | 1.00 |" in text
    assert "fit / no-fit agrees on 3 of 3" in text
