"""`resbench profile --engine`: the diffusers pipeline on the simulator and the CPU device."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from resbench.cli import cli
from resbench.run import load_run

# wan2.2 at 2 steps: the diffusers scheduler (flow_shift 3) gives t = 1000, 500, so step 1
# runs the low-noise expert; the zoo's (shift 12) gives t = 999, 923 >= 875: both steps on
# the high-noise one.
TINY = ["--model", "wan2.2", "--scale", "0.05", "--steps", "2", "--height", "64", "--width",
        "64", "--frames", "5", "--json"]


def profile(tmp_path: Path, *args: str) -> tuple[dict, object]:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["profile", *TINY, "--out", str(out), "--report",
                                      str(tmp_path / "r.html"), "--force", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), load_run(out)


def denoisers(run) -> set[str]:
    return {c.component for c in run.schedule.calls if c.stage == "denoise"}


@pytest.mark.parametrize("device", ["sim", "cpu"])
def test_profile_runs_the_diffusers_pipeline(tmp_path: Path, device: str) -> None:
    doc, run = profile(tmp_path, "--engine", "diffusers", "--device", device)
    assert (doc["engine"], doc["device"], doc["model"]) == ("diffusers", device, "wan2.2-t2v-a14b")
    assert doc["latency_s"] > 0 and doc["h2d_bytes"] > 0
    assert doc["peak_device_bytes"] <= doc["budget_bytes"]
    assert run.extra["engine"] == "diffusers"
    assert denoisers(run) == {"transformer", "transformer_2"}


def test_the_engine_decides_the_schedule(tmp_path: Path) -> None:
    doc, run = profile(tmp_path, "--engine", "zoo", "--device", "sim")
    assert doc["engine"] == "zoo"
    assert denoisers(run) == {"transformer"}


def test_diffusers_by_default_where_it_implements_the_model(tmp_path: Path) -> None:
    doc, _ = profile(tmp_path, "--device", "sim")
    assert doc["engine"] == "diffusers"
    doc, _ = profile(tmp_path, "--device", "sim", "--model", "wan2.1-1.3b")
    assert doc["engine"] == "zoo"


def test_diffusers_engine_for_a_model_it_lacks_is_bad_input(
        tmp_path: Path, run_main: Callable[..., tuple[int, str, str]]) -> None:
    # the entry point's error mapping, in process (tests/cli runs `profile` from the shell)
    code, _, err = run_main("profile", "--engine", "diffusers", "--model", "wan2.1-1.3b",
                            "--device", "sim", "--steps", "1", "--out", tmp_path / "run")
    assert code == 2, err
    assert "does not implement wan2.1-t2v-1.3b" in err
    assert "Traceback" not in err
