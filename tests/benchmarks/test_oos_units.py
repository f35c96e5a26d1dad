"""benchmarks/oos_units.py: the card's per-unit seconds against the cost model's."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from benchmarks.oos_units import compare, unit_kind
from resbench.cost import CostModel
from resbench.testing.synthetic import ideal_profile, synthetic_schedule


def test_all_resident_units_are_compared_by_stage_component_and_kind() -> None:
    base = synthetic_schedule({"dit": {"blocks.0": 10, "blocks.1": 10, "rest": 10}},
                              [("denoise", "dit", "blocks.0"), ("denoise", "dit", "blocks.1"),
                               ("denoise", "dit", "rest")])
    calls = tuple(dataclasses.replace(c, memory_bytes=10**9 * (i + 1))
                  for i, c in enumerate(base.calls))
    schedule = dataclasses.replace(base, calls=calls)
    profile = ideal_profile()
    sim = CostModel(profile).call_times(calls)
    pred = pd.DataFrame([{"pair_id": "r-full-all-resident", "plan": "all-resident", "request": "r"},
                         {"pair_id": "r-16GB-sglang", "plan": "sglang-wan2.2", "request": "r"}])
    units = pd.DataFrame([
        {"pair_id": "r-full-all-resident", "stage": "denoise", "component": "dit", "unit": u,
         "calls": 1, "compute_s": s}
        for u, s in (("blocks.0", 0.5), ("blocks.1", 0.5), ("rest", 0.25))])
    f = compare(units, pred, {"r": schedule}, profile).set_index("kind")
    assert list(f.index) == ["blocks", "rest"]
    assert f.loc["blocks", "real_s"] == pytest.approx(1.0)
    assert f.loc["blocks", "sim_s"] == pytest.approx(sim[0] + sim[1])
    assert f.loc["rest", "err_pct"] == pytest.approx(100 * (sim[2] / 0.25 - 1))
    assert (unit_kind("transformer_blocks.12"), unit_kind("decoder.mid_block")) == (
        "blocks", "decoder.mid_block")
