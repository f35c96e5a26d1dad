"""`tune --engine`: the study searches plans on the engine's schedule and records the engine."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from resbench.cli import cli
from resbench.errors import InputError
from resbench.tune import TuneOptions, tune

SWEEP = Path(__file__).parents[1] / "tune" / "tiny-sweep.toml"
REQUEST = {"height": 64, "width": 64, "frames": 5, "steps": 2}


def options(tmp_path: Path, **overrides) -> TuneOptions:
    kwargs = {"model": "wan2.2", "scale": 0.05, "request": REQUEST, "budget_bytes": 200_000_000,
              "hardware": "h100-80g", "storage": str(tmp_path / "study.log"),
              "presets_dir": tmp_path / "no-presets", "sweep": SWEEP, "n_trials": 4, "seed": 0,
              **overrides}
    return TuneOptions(**kwargs)


def test_tune_searches_the_diffusers_schedule_by_default(tmp_path: Path) -> None:
    result = tune(options(tmp_path))
    assert result.study_name == ("wan2.2-t2v-a14b__h100-80g__200MB__64x64x5s2cfg__diffusers"
                                 "__scale0.05__tiny-sweep")
    study = optuna.load_study(study_name=result.study_name, storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "study.log"))))
    assert study.user_attrs["engine"] == "diffusers"
    assert study.user_attrs["constraints"]["engine"] == "diffusers"
    assert result.trials_feasible > 0
    # the same study under the other engine is refused: its trials were judged on another schedule
    with pytest.raises(InputError, match=r"engine diffusers \(this run: zoo\)"):
        tune(options(tmp_path, engine="zoo", study_name=result.study_name))


def test_tune_command_takes_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "plan.toml"
    result = CliRunner().invoke(cli, [
        "tune", "--model", "wan2.2", "--engine", "zoo", "--scale", "0.05", "--budget", "200MB",
        "--height", "64", "--width", "64", "--frames", "5", "--steps", "2", "--sweep", str(SWEEP),
        "--n-trials", "3", "--seed", "0", "--storage", str(tmp_path / "study.log"),
        "--presets", str(tmp_path / "none"), "--out", str(out), "--no-report", "--json"])
    assert result.exit_code == 0, result.output
    assert "__diffusers" not in result.stdout and out.is_file()
