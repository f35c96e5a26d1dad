"""Shipped presets and sweeps are found from any folder, installed or not.

Regression: from a folder other than the repository root, `resbench profile --model wan2.2`
failed with "plan 'sglang-wan2.2' is neither a file nor a preset; presets: " (an empty list):
presets and sweeps were looked up relative to the working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from resbench.resources import load_presets, preset_names, resolve_plan, shipped_dir, sweep_path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--scale", "0.05", "--height", "128", "--width", "128", "--frames", "5", "--steps", "2"]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resbench", *args], cwd=cwd, text=True,
                          capture_output=True, env=env, timeout=300)


def test_a_checkout_reads_the_folders_people_edit() -> None:
    assert shipped_dir("presets") == REPO / "strategies" / "presets"
    assert set(preset_names()) == {p.stem for p in (REPO / "strategies" / "presets").glob("*.toml")}
    assert sweep_path("wan") == REPO / "sweeps" / "wan.toml"
    assert resolve_plan(None).name == "sglang-wan2.2"
    assert "all-resident" in load_presets()


def test_profile_runs_from_another_folder(tmp_path: Path) -> None:
    res = cli("profile", "--model", "wan2.2", *TINY, "--out", str(tmp_path / "run"),
              "--report", str(tmp_path / "r.html"), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["plan"] == "sglang-wan2.2" and doc["latency_s"] > 0
    assert not (tmp_path / "strategies").exists()


def test_tune_runs_from_another_folder(tmp_path: Path) -> None:
    res = cli("tune", "--model", "wan2.1-t2v-1.3b", *TINY, "--budget", "2GB", "--n-trials", "3",
              "--storage", str(tmp_path / "s.log"), "--out", str(tmp_path / "plan.toml"),
              "--no-report", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["sweep"].endswith("sweeps/wan.toml")
    assert {p["name"] for p in doc["presets"]} == set(preset_names())
    assert (tmp_path / "plan.toml").is_file()


def test_a_wheel_carries_the_presets_and_sweeps_and_finds_them(tmp_path: Path) -> None:
    """A non-editable install: the wheel holds byte-equal copies under resbench/data/, and
    the installed package reads them from there, run from an unrelated folder."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("resbench-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for source, packaged in (("strategies/presets", "resbench/data/presets"),
                                 ("sweeps", "resbench/data/sweeps")):
            files = sorted((REPO / source).glob("*.toml"))
            assert files
            for f in files:
                assert f"{packaged}/{f.name}" in names
                assert zf.read(f"{packaged}/{f.name}") == f.read_bytes()
        zf.extractall(site)
    probe = ("import resbench, resbench.resources as r; "
             "print(resbench.__file__); print(r.shipped_dir('presets')); "
             "print(','.join(r.preset_names())); print(r.sweep_path('wan'))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    module, presets_dir, names_line, wan = res.stdout.split("\n")[:4]
    assert module.startswith(str(site))
    assert presets_dir == str(site / "resbench" / "data" / "presets")
    assert set(names_line.split(",")) == set(preset_names())
    assert wan == str(site / "resbench" / "data" / "sweeps" / "wan.toml")
