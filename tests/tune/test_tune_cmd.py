"""`resbench tune` through the real entry point (in process): options, errors, exit codes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
from tune_setup import MODEL, REQUEST_ARGS, TINY_SWEEP

from resbench.cli import cli, main
from resbench.cli.tune_cmd import TuneProgress
from resbench.cli.tune_cmd import command as tune_command
from resbench.tune.trial_log import read_trial_log

TINY = ["tune", "--model", MODEL, "--scale", "0.05", *REQUEST_ARGS, "--sweep", str(TINY_SWEEP),
        "--hardware", "h100-80g", "--seed", "0", "--no-report"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    return lines[-1]


def test_option_set_is_deliberate() -> None:
    names = sorted(p.opts[0] for p in tune_command.params)
    assert names == sorted([
        "--model", "--engine", "--budget", "--host-budget", "--hardware", "--sweep", "--n-trials",
        "--timeout", "--sampler", "--objectives", "--seed", "--storage", "--study-name",
        "--device", "--screen-margin", "--validate", "--out", "--presets", "--scale", "--height", "--width",
        "--frames", "--steps", "--cfg", "--cfg-mode", "--batch", "--json", "--report",
        "--no-report"])
    assert cli.commands["tune"] is tune_command


@pytest.mark.parametrize(("text", "fraction"), [("10", 0.10), ("2.5%", 0.025), ("0", 0.0),
                                              ("off", None)])
def test_screen_margins_are_percentages_or_off(text: str, fraction: float | None) -> None:
    ctx = tune_command.make_context("tune", ["--budget", "48GB", "--screen-margin", text])
    assert ctx.params["screen_margin"] == fraction


def test_a_bad_screen_margin_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *TINY, "--budget=48GB", "--screen-margin=-5")
    assert code == 2 and out == ""
    line = error_line(err)
    assert "-5" in line and "percentage" in line and "off" in line


@pytest.mark.parametrize(("text", "nbytes"), [
    ("48GB", 48 * 10**9), ("48 GB", 48 * 10**9), ("48gb", 48 * 10**9), ("48GiB", 48 * 2**30),
    ("44.7GiB", round(44.7 * 2**30)), ("48e9", 48 * 10**9)])
def test_budget_strings_are_accepted(text: str, nbytes: int) -> None:
    ctx = tune_command.make_context("tune", ["--budget", text])
    assert ctx.params["budget"] == nbytes


@pytest.mark.parametrize("text", ["0", "-1", "abc", "48 parsecs"])
def test_bad_budgets_are_one_line_usage_errors(capsys: pytest.CaptureFixture[str],
                                               text: str) -> None:
    code, out, err = run(capsys, *TINY, f"--budget={text}")
    assert code == 2 and out == ""
    line = error_line(err)
    assert "budget" in line and text in line


def test_a_budget_above_the_card_names_the_card(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *TINY, "--budget", "100GB")
    assert code == 2
    line = error_line(err)
    assert "h100-80g" in line and "85.02 GB" in line and "100.00 GB" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--sampler", "cmaes"], "'cmaes' is not one of 'tpe', 'random', 'nsga2'"),
    (["--objectives", "latency,cost"], "latency,peak-memory"),
    (["--storage", "nosuchdb://host/x"], "cannot open study storage 'nosuchdb://host/x'"),
    (["--device", "cuda"], "--device cuda cannot run"),
    (["--model", "wan9"], "unknown model 'wan9'"),
])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         args: list[str], expected: str) -> None:
    code, out, err = run(capsys, *TINY, "--budget", "50MB", "--storage",
                         str(tmp_path / "x.log"), *args)
    assert code == 2 and out == ""
    assert expected in error_line(err)


def test_a_sweep_with_a_bad_knob_exits_2_naming_the_file(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    sweep = tmp_path / "bad.toml"
    sweep.write_text('schema = 1\n[components.dit]\nstrategies = ["layerwise"]\n'
                     '[components.dit.layerwise]\nprefetch = [true, false]\n')
    code, _, err = run(capsys, *TINY, "--budget", "50MB", "--sweep", str(sweep))
    assert code == 2
    line = error_line(err)
    assert str(sweep) in line and "components.dit.layerwise.prefetch" in line
    assert "valid knobs: group_size, prefetch_depth, resident_blocks, placement" in line


def test_json_run_writes_the_plan_and_a_rerun_resumes(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    storage = str(tmp_path / "s.log")
    out_path = tmp_path / "plan.toml"
    args = [*TINY, "--budget", "60MB", "--n-trials", "6", "--storage", storage, "--out",
            str(out_path), "--presets", str(tmp_path / "none"), "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["out"] == str(out_path) and doc["trials_total"] == 6
    assert doc["study_name"] == ("wan2.1-t2v-1.3b__h100-80g__60MB__128x128x5s4cfg__scale0.05"
                                 "__tiny-sweep")
    assert doc["best"]["latency_s"] > 0 and doc["result"] == "simulated"
    assert "budget 60.00 MB = 57.22 MiB = 60,000,000 B" in err
    # one line per trial this worker finished (no progress bar in a log): the worker's record
    logged = read_trial_log(err)
    assert sorted(r.number for r in logged) == list(range(6))
    assert all(r.state == "COMPLETE" and r.plan and r.worker for r in logged)
    assert out_path.read_text().startswith("# Tuned by `resbench tune`")
    code, out, _ = run(capsys, *args[:-1], "--n-trials", "4", "--json")
    assert code == 0 and json.loads(out)["trials_total"] == 10


def test_tables_on_the_terminal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, *TINY, "--budget", "60MB", "--n-trials", "4", "--storage",
                       str(tmp_path / "s.log"), "--out", str(tmp_path / "p.toml"))
    assert code == 0
    assert "best plan" in out and "comparison" in out and "lower bound" in out
    assert "all-resident (whole card)" in out


def test_no_plan_fits_exits_3_with_the_smallest_budget(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    code, out, err = run(capsys, *TINY, "--budget", "20MB", "--n-trials", "5", "--storage",
                         str(tmp_path / "s.log"), "--json")
    assert code == 3 and out == ""
    line = error_line(err)
    assert "no plan fits 20.00 MB on h100-80g" in line
    assert "the smallest budget any plan fits in is" in line


def test_ctrl_c_exits_130_and_keeps_the_finished_trials(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    k = 3
    calls: list[int] = []

    def interrupt(self: TuneProgress, study: optuna.Study, trial: object) -> None:
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(TuneProgress, "__call__", interrupt)
    storage = str(tmp_path / "s.log")
    code, out, err = run(capsys, *TINY, "--budget", "60MB", "--n-trials", "50", "--storage",
                         storage, "--study-name", "ctrl-c")
    assert code == 130 and out == ""
    assert f"keeps its {k} complete and 0 failed trials in {storage}" in err and "resume" in err
    study = optuna.load_study(study_name="ctrl-c", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == k


def test_tune_writes_and_prints_its_report(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    args = [a for a in TINY if a != "--no-report"]
    report = tmp_path / "study.html"
    code, out, err = run(capsys, *args, "--budget", "1GB", "--n-trials", "4",
                         "--storage", f"sqlite:///{tmp_path / 's.db'}",
                         "--out", str(tmp_path / "plan.toml"), "--report", str(report), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["report"] == str(report) and report.is_file()
    assert "https://" not in report.read_text()
    assert 0 <= doc["last_gain_trial"] < doc["trials_total"] == 4
    assert doc["converged"] == (4 - 1 - doc["last_gain_trial"] >= 2)


def test_a_hardware_file_whose_name_is_no_preset_tunes_and_reports(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Regression: `tune --hardware FILE.toml` wrote the plan, then exited 2 with "unknown
    hardware profile 'h200-141g-calibrated'": the report looked the profile up by name."""
    from resbench.hardware import get_profile, save_profile

    calibrated = dataclasses.replace(get_profile("h200-141g"), name="h200-141g-calibrated")
    hw = save_profile(calibrated, tmp_path / "mine.toml")
    args = [a for a in TINY if a != "--no-report"]
    args[args.index("--hardware") + 1] = str(hw)
    code, out, err = run(capsys, *args, "--budget", "60MB", "--n-trials", "3", "--storage",
                         str(tmp_path / "s.log"), "--out", str(tmp_path / "plan.toml"),
                         "--report", str(tmp_path / "study.html"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["hardware"] == "h200-141g-calibrated"
    assert doc["report"] == str(tmp_path / "study.html") and (tmp_path / "study.html").is_file()
    study = optuna.load_study(study_name=doc["study_name"], storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.log"))))
    assert study.user_attrs["hardware_profile"]["name"] == "h200-141g-calibrated"


def test_rerunning_a_study_under_another_budget_stops_instead_of_a_wrong_plan(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A study made at one budget and rerun at a smaller one (same --study-name) used to
    write a plan peaking above the new budget with exit 0."""
    common = [*TINY, "--n-trials", "3", "--storage", str(tmp_path / "s.log"), "--study-name",
              "shared", "--out", str(tmp_path / "plan.toml")]
    code, _, err = run(capsys, *common, "--budget", "70MB")
    assert code == 0, err
    (tmp_path / "plan.toml").unlink()
    code, _, err = run(capsys, *common, "--budget", "40MB")
    line = error_line(err)
    assert code == 2 and "was built under other constraints" in line
    assert "budget_bytes 70.00 MB (this run: 40.00 MB)" in line
    assert not (tmp_path / "plan.toml").exists()
    code, _, err = run(capsys, *common, "--budget", "70MB", "--host-budget", "1GB")
    assert code == 2 and "host_budget_bytes" in error_line(err)
