from __future__ import annotations

import numpy as np
import pytest

from resbench.analysis import (
    RunAnalysis,
    activation_timeline,
    bandwidth_summary,
    component_breakdown,
    lower_bound,
    memory_timeline,
    resident_at_peak,
    stage_breakdown,
    step_timeline,
    transfer_outcomes,
)
from resbench.analysis.intervals import cover, covered, measure
from resbench.hardware import get_profile
from tests.report.helpers import synthetic_schedule


def test_cover_merges_overlaps_and_measures_inside_spans():
    c = cover(np.array([0.0, 1.0, 5.0, 2.0]), np.array([2.0, 3.0, 6.0, 2.5]))
    assert c[0].tolist() == [0.0, 5.0] and c[1].tolist() == [3.0, 6.0]
    assert measure(c) == 4.0
    assert covered(c, np.array([0.0, 2.5, 4.0]), np.array([10.0, 5.5, 4.5])).tolist() == [4.0, 1.0, 0.0]


def test_components_add_up_to_the_simulator_totals(sim_run, frame):
    _, result, _ = sim_run
    table = component_breakdown(frame)
    assert table["component"].tolist() == ["text_encoder", "transformer", "vae"]
    assert table["compute_s"].sum() == pytest.approx(result.compute_s)
    assert table["stall_s"].sum() == pytest.approx(result.stall_s)
    assert table["h2d_bytes"].sum() == result.h2d_bytes
    assert (table["exposed_transfer_s"] <= table["transfer_s"] + 1e-12).all()
    assert (table["exposed_transfer_s"] >= 0).all()


def test_prefetch_outcomes(frame):
    out = transfer_outcomes(frame)
    demand = out[out["outcome"] == "demand"]
    # the cold text encoder (3 units) and the first streamed DiT block
    assert sorted(zip(demand["component"], demand["unit"], strict=True)) == [
        ("text_encoder", "blocks.0"), ("text_encoder", "blocks.1"), ("text_encoder", "rest"),
        ("transformer", "blocks.0")]
    late = out[out["outcome"] == "late"]
    assert len(late) > 0 and (late["stall_s"] > 0).all()
    hits = out[out["outcome"] == "hit"]
    assert (hits["stall_s"] == 0).all()
    # every prefetch was consumed by a compute of the same unit, after the copy was issued
    used = out[out["reason"] == "prefetch"]
    consumers = frame.loc[used["consumer_row"]]
    assert (consumers["kind"] == "compute").all()
    assert (consumers["unit"].to_numpy() == used["unit"].to_numpy()).all()
    assert (consumers["t_s"].to_numpy() >= used["end_s"].to_numpy() - 1e-12).all()


def test_stage_wall_time_is_partitioned(frame, sim_run):
    table = stage_breakdown(frame)
    assert table["stage"].tolist() == ["setup", "text_encode", "denoise", "decode"]
    parts = table[["compute_s", "stall_wall_s", "exposed_copy_s", "other_s"]].sum(axis=1)
    assert np.allclose(parts, table["wall_s"], atol=1e-12)
    request = table[table["stage"] != "setup"]
    assert request["wall_s"].sum() == pytest.approx(sim_run[1].latency_s)


def test_steps(frame):
    steps = step_timeline(frame)
    assert steps["step"].tolist() == [0, 1, 2]
    assert (steps["end_s"] > steps["start_s"]).all()
    assert (steps["start_s"].diff().dropna() > 0).all()
    assert (steps["components"] == "transformer").all()
    assert steps["stall_s"].iloc[0] > steps["stall_s"].iloc[1]  # the cold first block


def test_memory_and_what_was_resident_at_the_peak(frame, sim_run):
    mem = memory_timeline(frame)
    peak = resident_at_peak(frame)
    assert peak["bytes"].sum() == mem["device_bytes"].max()
    top = peak.iloc[0]
    assert top["component"] == "transformer"  # its rest and its staging pool (2 slots)
    assert top["units"] == 1 and top["bytes"] >= 10**7 + 2 * 6 * 10**7
    assert peak["share"].sum() == pytest.approx(1.0)


def test_activations_give_the_simulator_peak(frame, sim_run):
    schedule, result, _ = sim_run
    act = activation_timeline(frame, schedule)
    assert len(act) == len(schedule.calls)
    assert act["device_bytes"].max() == result.peak_device_bytes
    peak = resident_at_peak(frame, schedule)
    assert peak["bytes"].sum() == result.peak_device_bytes
    assert peak["component"].str.startswith("activations of ").sum() == 1
    with pytest.raises(ValueError, match="not the same run"):
        activation_timeline(frame, synthetic_schedule(steps=2))


def test_bandwidth_and_lower_bound(frame, sim_run):
    profile = get_profile("h100-80g")
    bw = bandwidth_summary(frame, profile).set_index("direction")
    assert 0.9 < bw.loc["h2d", "fraction_of_peak"] <= 1.0
    bound = lower_bound(frame, profile).iloc[0]
    assert bound["latency_s"] == pytest.approx(sim_run[1].latency_s)
    assert bound["latency_s"] >= bound["lower_bound_s"]
    assert bound["ratio_to_bound"] >= 1.0
    assert bound["lower_bound_s"] == max(bound["compute_s"], bound["transfer_bound_s"])


def test_facade_summary(frame, sim_run):
    schedule, result, _ = sim_run
    summary = RunAnalysis(frame, get_profile("h100-80g"), schedule).summary()
    assert summary["peak_device_bytes"] == result.peak_device_bytes
    assert summary["latency_s"] == pytest.approx(result.latency_s)
    assert summary["stall_s"] == pytest.approx(result.stall_s)
    assert summary["h2d_bytes"] == result.h2d_bytes
    assert summary["demand_loads"] == 4
