"""`resbench models` and `resbench profile` end to end. One error of each command goes
through the real entry point in a fresh interpreter (one line on stderr, no traceback, the
documented exit code from the shell); the other cases call that entry point,
`resbench.cli.main`, in this process: the same parsing, work and error mapping, without
an interpreter start-up (~6 s on 2 cores) per case."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

RunMain = Callable[..., tuple[int, str, str]]
"""The `run_main` fixture (tests/conftest.py)."""


def resbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resbench", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def in_process(run_main: RunMain, *args: str) -> subprocess.CompletedProcess[str]:
    """`resbench ARGS` run by `main` here (the `run_main` fixture), as a subprocess's result."""
    return subprocess.CompletedProcess(list(args), *run_main(*args))


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1]


def test_models_json_lists_the_zoo_with_published_counts(
        run_main: RunMain) -> None:
    result = in_process(run_main, "models", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["model"]: m for m in json.loads(result.stdout)["models"]}
    assert {"wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "wan2.1-t2v-14b",
            "wan2.1-t2v-1.3b", "flux.1-dev", "qwen-image", "ltx-video", "hunyuanvideo"} <= set(models)
    for m in models.values():
        assert m["params_err_pct"] is None or abs(m["params_err_pct"]) <= 2


def test_models_show_units(run_main: RunMain) -> None:
    result = in_process(run_main, "models", "show", "wan2.2", "--json")
    doc = json.loads(result.stdout)
    assert doc["model"] == "wan2.2-t2v-a14b" and doc["boundary"] == 0.875
    units = [u for u in doc["units"] if u["component"] == "transformer"]
    assert len(units) == 41 and units[-1]["unit"] == "rest"


def test_unknown_model_exit_2_with_close_matches() -> None:
    line = one_line_error(resbench("models", "show", "wan2.3"), 2)  # from the shell
    assert "did you mean wan2.2" in line


def test_profile_on_the_simulator_by_default(tmp_path: Path,
                                             run_main: RunMain) -> None:
    result = in_process(run_main, "profile", "--model", "wan2.1-1.3b", "--steps", "2", "--height",
                        "480", "--width", "832", "--budget", "24GB", "--device", "sim",
                        "--out", str(tmp_path / "run"), "--report", str(tmp_path / "r.html"),
                        "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["device"] == "sim" and doc["hardware"] == "h100-80g"
    assert doc["latency_s"] > doc["compute_s"] * 0.99 > 0
    assert doc["peak_device_bytes"] <= 24 * 10**9
    outputs = doc["outputs"]
    assert Path(outputs["report"]).is_file() and Path(outputs["chrome_trace"]).is_file()
    assert (tmp_path / "run" / "run.json").is_file()


PROFILE_BAD_INPUT = [
    (["--budget", "48 GiB B"], 2, "cannot read"),
    (["--budget", "-1"], 2, "budget"),
    (["--budget", "1GB"], 3, "smallest budget any plan fits in"),
    (["--budget", "500GB"], 2, "above h100-80g"),
    (["--plan", "nope"], 2, "neither a file nor a preset"),
    (["--frames", "80"], 2, "frames must be 4·k+1"),
    (["--hardware", "h900"], 2, "h100-80g"),
]


def profile_args(tmp_path: Path, args: list[str]) -> list[str]:
    return ["profile", "--model", "wan2.1-1.3b", "--steps", "1", "--device", "sim",
            "--out", str(tmp_path / "run"), *args]


def test_profile_bad_input_from_the_shell(tmp_path: Path) -> None:
    args, code, text = PROFILE_BAD_INPUT[0]
    result = resbench(*profile_args(tmp_path, args))
    line = one_line_error(result, code)
    assert text in result.stderr, line


@pytest.mark.parametrize("args, code, text", PROFILE_BAD_INPUT[1:])
def test_profile_bad_input(args, code, text, tmp_path: Path,
                           run_main: RunMain) -> None:
    result = in_process(run_main, *profile_args(tmp_path, args))
    line = one_line_error(result, code)
    assert text in result.stderr, line


def test_plan_naming_a_missing_component(tmp_path: Path,
                                         run_main: RunMain) -> None:
    plan = tmp_path / "p.toml"
    plan.write_text('schema = 1\n[components.transformer_2]\nstrategy = "resident"\n')
    result = in_process(run_main, "profile", "--model", "wan2.1-1.3b", "--steps", "1", "--device",
                        "sim", "--plan", str(plan), "--out", str(tmp_path / "run"))
    assert "no component 'transformer_2'" in one_line_error(result, 2)
