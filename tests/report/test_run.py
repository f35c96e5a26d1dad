from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from resbench.errors import InputError
from resbench.hardware import get_profile
from resbench.run import SCHEMA, is_run, load_run, save_run
from tests.report.helpers import CAPACITY, synthetic_plan


@pytest.mark.parametrize("parquet", [False, True])
def test_round_trip(sim_run, tmp_path, parquet):
    if parquet:
        pytest.importorskip("pyarrow")
    schedule, result, tracer = sim_run
    paths = save_run(tmp_path / "run", events=tracer, plan=synthetic_plan(),
                     profile=get_profile("h100-80g"), model="synthetic", request=schedule.request,
                     result=result, capacity_bytes=CAPACITY, schedule=schedule, parquet=parquet)
    assert paths["events"].name == ("events.parquet" if parquet else "events.csv.gz")
    assert is_run(paths["run"]) and is_run(paths["meta"])
    run = load_run(paths["run"])
    pd.testing.assert_frame_equal(run.events, tracer.frame())
    assert run.plan == synthetic_plan()
    assert run.schedule == schedule
    assert run.result["latency_s"] == result.latency_s
    assert run.profile["name"] == "h100-80g"
    assert run.capacity_bytes == CAPACITY
    assert run.schedule_summary["components"]["transformer"]["units"] == 5
    assert "pandas" in run.versions and "python" in run.versions
    assert load_run(paths["meta"]).name == "run"


def test_saving_again_replaces_the_events_file(saved_run):
    before = load_run(saved_run)
    save_run(saved_run, events=before.events, plan=before.plan, profile=before.profile,
             model=before.model, request=before.request, result=before.result, parquet=False)
    files = sorted(p.name for p in saved_run.iterdir())
    assert files == ["events.csv.gz", "plan.toml", "run.json"]


def test_profile_result_is_accepted(sim_run, tmp_path):
    """`resbench profile` passes its ProfileResult; fields come from its attributes."""
    schedule, result, tracer = sim_run
    res = SimpleNamespace(model="synthetic", device="sim", hardware="h100-80g",
                          request=schedule.request, plan=synthetic_plan(), budget_bytes=CAPACITY,
                          latency_s=result.latency_s, compute_s=result.compute_s,
                          stall_s=result.stall_s, h2d_bytes=result.h2d_bytes, d2h_bytes=0,
                          peak_device_bytes=result.peak_device_bytes, pinned_host_bytes=0,
                          h2d_peak_bytes_per_s=5.5e10, trace=tracer.frame(), schedule=schedule,
                          extra={"note": "x"})
    paths = save_run(tmp_path / "p", res)
    run = load_run(paths["run"])
    assert run.result["latency_s"] == result.latency_s
    assert run.capacity_bytes == CAPACITY and run.extra == {"note": "x"}
    assert run.profile["h2d_pinned_bytes_per_s"] == get_profile("h100-80g").h2d_pinned_bytes_per_s


def test_errors(saved_run, tmp_path):
    with pytest.raises(InputError, match="not a run"):
        load_run(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    run = load_run(saved_run)
    with pytest.raises(InputError, match="holds no run"):
        save_run(tmp_path / "junk", events=run.events, plan=run.plan, profile=run.profile,
                 model="m", request={}, result={})
    with pytest.raises(TypeError, match="missing fields"):
        save_run(tmp_path / "new", events=run.events)
    bad = tmp_path / "old"
    save_run(bad, events=run.events, plan=run.plan, profile=run.profile, model="m", request={},
             result={}, parquet=False)
    doc = json.loads((bad / "run.json").read_text())
    doc["schema"] = SCHEMA + 1
    (bad / "run.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"schema {SCHEMA + 1} found"):
        load_run(bad)
