from __future__ import annotations

import gzip
import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

import resbench.run as run_module
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


def test_saving_over_a_run_needs_force_and_replaces_it_whole(saved_run, tmp_path):
    before = load_run(saved_run)
    copy = tmp_path / "copy"
    shutil.copytree(saved_run, copy)
    (copy / "trace.json.gz").write_bytes(b"from the old run")
    fields = dict(events=before.events, plan=before.plan, profile=before.profile,
                  model=before.model, request=before.request, result=before.result, parquet=False)
    with pytest.raises(InputError, match="already holds a run; pass --force"):
        save_run(copy, **fields)
    assert (copy / "trace.json.gz").read_bytes() == b"from the old run"  # refused: untouched
    save_run(copy, force=True, **fields)
    files = sorted(p.name for p in copy.iterdir())
    assert files == ["events.csv.gz", "plan.toml", "run.json"]  # nothing of the old run left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary folder left


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
    for force in (False, True):  # never deleted, even with force
        with pytest.raises(InputError, match="holds files but no run"):
            save_run(tmp_path / "junk", events=run.events, plan=run.plan, profile=run.profile,
                     model="m", request={}, result={}, force=force)
        assert (tmp_path / "junk" / "x.txt").read_text() == "x"
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


def _fields(run):
    return dict(events=run.events, plan=run.plan, profile=run.profile, model=run.model,
                request=run.request, result=run.result, parquet=False)


def test_a_save_stopped_midway_leaves_no_run(saved_run, tmp_path, monkeypatch):
    """Files are written into a hidden folder renamed into place at the end: stopped before
    that, the run folder does not exist (new run) or still holds the old run (--force)."""
    run = load_run(saved_run)
    real_write = run_module._write_run_files

    def killed(folder, args, *, name):
        real_write(folder, args, name=name)  # every file written, run.json included
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_write_run_files", killed)
    with pytest.raises(KeyboardInterrupt):
        save_run(tmp_path / "new", **_fields(run))
    assert not (tmp_path / "new").exists() and not is_run(tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(saved_run, old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        save_run(old, force=True, **{**_fields(run), "model": "replacement"})
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_an_unfinished_folder_is_never_taken_for_a_run(saved_run, tmp_path, caplog):
    """A kill between the last file and the rename leaves `.NAME.<pid>-<token>.partial`
    holding every file; it is not a run, and the next save into NAME says it is there."""
    partial = tmp_path / ".run.4242-0bad.partial"
    shutil.copytree(saved_run, partial)
    assert not is_run(partial)
    with pytest.raises(InputError, match="left unfinished by an interrupted save"):
        load_run(partial)
    with caplog.at_level("WARNING", logger="resbench.run"):
        save_run(tmp_path / "run", **_fields(load_run(saved_run)))
    assert ".run.4242-0bad.partial" in caplog.text and "safe to delete" in caplog.text
    assert is_run(tmp_path / "run")


def test_a_result_without_a_value_is_stored_as_null(sim_run, tmp_path):
    schedule, result, tracer = sim_run
    paths = save_run(tmp_path / "r", events=tracer, plan=synthetic_plan(),
                     profile={"name": "cpu"}, model="m", request=schedule.request,
                     result={"latency_s": 1.0, "h2d_peak_bytes_per_s": float("nan")})
    text = paths["meta"].read_text()
    assert "NaN" not in text
    assert json.loads(text)["result"] == {"latency_s": 1.0, "h2d_peak_bytes_per_s": None}


def test_damaged_files_are_named(saved_run, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(saved_run, damaged)
    events = next(damaged.glob("events.*"))
    events.write_bytes(events.read_bytes()[:64])
    with pytest.raises(InputError, match=f"{events.name}: damaged or truncated"):
        load_run(damaged)


def test_a_schedule_of_another_schema_names_both_versions(sim_run, tmp_path):
    schedule, result, tracer = sim_run
    paths = save_run(tmp_path / "r", events=tracer, plan=synthetic_plan(), schedule=schedule,
                     profile=get_profile("h100-80g"), model="m", request=schedule.request,
                     result=result, parquet=False)
    doc = json.loads(gzip.decompress(paths["schedule"].read_bytes()))
    doc["schema"] = SCHEMA + 1
    paths["schedule"].write_bytes(gzip.compress(json.dumps(doc).encode()))
    with pytest.raises(InputError, match=f"schedule schema {SCHEMA + 1} found; this resbench "
                                         f"reads schedule schema {SCHEMA}"):
        load_run(paths["run"])
