from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from resbench.cli import cli, main
from resbench.hardware import NUMERIC_FIELDS, PRESETS, save_profile


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_hardware_lists_presets_as_a_table() -> None:
    out = _invoke("hardware").output
    assert "h100-80g" in out and "rtx5090-32g" in out
    assert _invoke("hardware", "list").output == out


@pytest.mark.parametrize("args", [("hardware", "--json"), ("hardware", "list", "--json")])
def test_hardware_json_is_one_document(args: tuple[str, ...]) -> None:
    doc = json.loads(_invoke(*args).output)
    assert [row["name"] for row in doc["presets"]] == list(PRESETS)
    h100 = doc["presets"][list(PRESETS).index("h100-80g")]
    assert h100["gemm_tflop_per_s"] == pytest.approx(729.0)


def test_show_prints_every_field_with_unit_and_provenance() -> None:
    out = _invoke("hardware", "show", "h100-80g").output
    assert "54.90 GB/s" in out
    assert "measured" in out and "estimated" in out
    doc = json.loads(_invoke("hardware", "show", "h100-80g", "--json").output)
    assert doc["profile"]["schema"] == 1
    rows = {row["field"]: row for row in doc["fields"]}
    assert set(NUMERIC_FIELDS) <= set(rows)
    assert rows["h2d_pinned_bytes_per_s"]["unit"] == "B/s"
    assert rows["h2d_pinned_bytes_per_s"]["value"] == 54.9e9
    assert rows["h2d_pinned_bytes_per_s"]["provenance"] == "measured"


def test_show_reads_a_profile_file(tmp_path: Path) -> None:
    path = save_profile(PRESETS["h100-80g"].with_capacity(24 * 2**30), tmp_path / "small.toml")
    doc = json.loads(_invoke("hardware", "show", str(path), "--json").output)
    assert doc["profile"]["memory_capacity_bytes"] == 24 * 2**30


def test_unknown_profile_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["hardware", "show", "h100"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: unknown hardware profile 'h100'")


def test_calibrate_without_gpu_exits_2_in_process(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--quick", "--out", str(tmp_path / "card.toml")])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == [err[0]] and "calibrate needs a CUDA GPU; none found" in err[0]
    assert not (tmp_path / "card.toml").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU to calibrate")
def test_calibrate_without_gpu_exits_2_from_the_shell(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "resbench", "calibrate", "--out",
                           str(tmp_path / "card.toml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "calibrate needs a CUDA GPU" in errors[0]
    assert proc.stdout == ""


def test_option_sets_are_deliberate() -> None:
    def options(command) -> set[str]:
        return {p.name for p in command.params if p.name}

    hardware = cli.commands["hardware"]
    assert options(hardware) == {"as_json"}
    assert set(hardware.commands) == {"list", "show"}
    assert options(hardware.commands["show"]) == {"name_or_file", "as_json"}
    assert options(cli.commands["calibrate"]) == {"out", "quick", "base", "as_json"}
