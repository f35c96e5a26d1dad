"""Constants and helpers of the tuner tests: a tiny Wan2.1 1.3B (scale 0.05), a short request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resbench.tune import TuneOptions

MODEL = "wan2.1-1.3b"
SCALE = 0.05
REQUEST = {"height": 128, "width": 128, "frames": 5, "steps": 4}
REQUEST_ARGS = ["--height", "128", "--width", "128", "--frames", "5", "--steps", "4"]
BUDGET = 50_000_000
"""At this scale some plans fit 50 MB and many do not (the frugal one needs ~33 MB)."""
REPO = Path(__file__).resolve().parents[2]
WAN_SWEEP = REPO / "sweeps" / "wan.toml"
TINY_SWEEP = Path(__file__).with_name("tiny-sweep.toml")
"""wan.toml with margins in MiB: at scale 0.05 the shipped 256MiB..8GiB exceed any budget."""


def make_options(tmp_path: Path, **overrides: Any) -> TuneOptions:
    """Options of a small, fast, reproducible tune storing into `tmp_path` (a journal file:
    much faster than SQLite here; test_workers and the resume test cover SQLite)."""
    kwargs: dict[str, Any] = {
        "model": MODEL, "scale": SCALE, "request": dict(REQUEST), "budget_bytes": BUDGET,
        "hardware": "h100-80g", "storage": str(tmp_path / "study.log"),
        "presets_dir": tmp_path / "no-presets", "sweep": TINY_SWEEP, "n_trials": 10, "seed": 0,
        "study_name": "test",
    }
    kwargs.update(overrides)
    return TuneOptions(**kwargs)
