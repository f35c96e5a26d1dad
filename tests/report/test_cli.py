"""`resbench report`, `resbench export trace`, `resbench compare` through click."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from resbench.cli import cli, main
from resbench.hardware import get_profile
from resbench.report.chrome_trace import read_chrome_trace
from resbench.residency import LayerwiseConfig
from resbench.run import save_run
from tests.report.helpers import CAPACITY, make_study, simulate_synthetic, synthetic_plan


def _invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def _exit_code(capsys, *args: str) -> tuple[int, str]:
    """Through `main`, which maps resbench errors to their exit codes."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def slower_run(tmp_path_factory):
    """The synthetic pipeline without prefetch (every block on demand): slower."""
    plan = synthetic_plan().with_components(dit=LayerwiseConfig(group_size=1, prefetch_depth=0))
    schedule, result, tracer = simulate_synthetic(plan)
    path = tmp_path_factory.mktemp("runs") / "no-prefetch"
    save_run(path, events=tracer, plan=plan, profile=get_profile("h100-80g"), model="synthetic",
             request=schedule.request, result=result, capacity_bytes=CAPACITY)
    return path


def test_export_trace(saved_run, tmp_path):
    out = tmp_path / "t.json.gz"
    doc = json.loads(_invoke("export", "trace", saved_run, "-o", out, "--json").stdout)
    assert doc["trace"] == str(out) and doc["events"] > 100
    trace = read_chrome_trace(out)
    assert trace["distributedInfo"]["rank"] == 0 and trace["resbench"]["plan"] == "synthetic-stream"
    ends = json.loads(_invoke("export", "trace", saved_run, "-o", tmp_path / "e.json.gz",
                              "--detail", "ends", "--json").stdout)
    assert ends["events"] < doc["events"]


def test_compare_gates_regressions(saved_run, slower_run):
    out = _invoke("compare", saved_run, slower_run).stdout
    assert "latency_s" in out and "slower" in out
    doc = json.loads(_invoke("compare", saved_run, slower_run, "--json").stdout)
    assert doc["slowdown_pct"] > 5 and doc["regression"] is False
    row = {r["metric"]: r for r in doc["metrics"]}["latency_s"]
    assert row["mark"] == "+" and row["b"] > row["a"]
    failed = _invoke("compare", saved_run, slower_run, "--fail-on", "1", code=4)
    assert "regression" in failed.stderr
    _invoke("compare", slower_run, saved_run, "--fail-on", "1")  # B faster: passes
    _invoke("compare", saved_run, saved_run, "--fail-on", "0")


def test_report_of_runs_and_a_study(saved_run, slower_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    doc = json.loads(_invoke("report", saved_run, slower_run, "--out", out, "--json").stdout)
    assert doc["report"] == str(out) and doc["runs"] == ["synthetic", "no-prefetch"]
    assert ">Comparison</h2>" in out.read_text()
    make_study(f"sqlite:///{tmp_path / 's.db'}")
    doc = json.loads(_invoke("report", tmp_path / "s.db", "--out", tmp_path / "s.html",
                             "--json").stdout)
    assert doc["studies"] == ["synthetic-study"]
    code, err = _exit_code(capsys, "report", tmp_path / "s.db", "--study", "nope")
    assert code == 2 and "no study 'nope'" in err


def test_report_goes_to_reports_by_default(saved_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = json.loads(_invoke("report", saved_run, "--no-budget-curve", "--json").stdout)
    assert doc["report"] == "reports/synthetic.html" and (tmp_path / doc["report"]).is_file()


def test_report_rejects_what_it_cannot_read(tmp_path, capsys):
    code, err = _exit_code(capsys, "report", tmp_path)
    assert code == 2 and "neither a run folder" in err


def test_compare_exit_code_through_main(saved_run, slower_run, capsys):
    code, _ = _exit_code(capsys, "compare", saved_run, slower_run, "--fail-on", "1")
    assert code == 4
