"""Every `--json` output is strict JSON (RFC 8259): NaN and infinities are null.

The defect: `resbench profile --device cpu --json` crashed with "Out of range float values
are not JSON compliant" — a CPU run has no H2D peak bandwidth (NaN), which went into
run.json as the bare word NaN and broke the Chrome trace built from it; and `emit` printed
NaN itself for a bandwidth that could not be measured."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from resbench.cli import main
from resbench.cli.common import emit

# A plan that moves nothing: no copy to time, so the achieved H2D bandwidth is NaN too.
HANDS_OFF = 'schema = 1\nname = "hands-off"\n[components.default]\nstrategy = "disabled"\n'
TINY_CPU = ["profile", "--model", "wan2.1-1.3b", "--device", "cpu", "--scale", "0.02",
            "--steps", "2", "--height", "64", "--width", "64", "--frames", "5"]


def _reject(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def strict(text: str) -> object:
    return json.loads(text, parse_constant=_reject)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_emit_writes_nan_and_infinity_as_null(capsys: pytest.CaptureFixture[str]) -> None:
    frame = pd.DataFrame({"stage": ["a", "b"], "bw": [float("nan"), 2.0]})
    emit({"achieved": float("nan"), "nested": {"peak": [float("inf"), 1.0]}}, as_json=True,
         tables=[("stages", frame)])
    doc = strict(capsys.readouterr().out)
    assert doc == {"achieved": None, "nested": {"peak": [None, 1.0]},
                   "stages": [{"stage": "a", "bw": None}, {"stage": "b", "bw": 2.0}]}


def test_profile_on_the_cpu_device_prints_strict_json(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    plan = tmp_path / "hands-off.toml"
    plan.write_text(HANDS_OFF)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *TINY_CPU, "--plan", plan, "--out", run, "--report",
                             tmp_path / "r.html", "--json")
    assert code == 0, err
    doc = strict(out)
    assert doc["device"] == "cpu" and doc["latency_s"] > 0
    assert doc["achieved_h2d_bytes_per_s"] is None  # nothing was copied: no bandwidth
    meta = strict((run / "run.json").read_text())
    assert meta["result"]["h2d_peak_bytes_per_s"] is None  # the CPU has no H2D peak
    trace = strict(gzip.decompress((run / "trace.json.gz").read_bytes()).decode())
    assert trace["resbench"]["result"]["h2d_peak_bytes_per_s"] is None
    # the saved run reads back and exports again
    code, out, err = run_cli(capsys, "export", "trace", run, "-o", tmp_path / "t.json", "--json")
    assert code == 0, err
    assert strict(out)["events"] > 0 and strict((tmp_path / "t.json").read_text())


@pytest.mark.parametrize("args", [("models", "--json"), ("hardware", "--json"),
                                  ("hardware", "show", "rtx4090-24g", "--json"),
                                  ("models", "show", "flux.1-dev", "--json")])
def test_listing_commands_print_strict_json(capsys: pytest.CaptureFixture[str],
                                            args: tuple[str, ...]) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert isinstance(strict(out), dict)
