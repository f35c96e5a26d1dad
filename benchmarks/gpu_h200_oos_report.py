"""The `report` mode of benchmarks/gpu_h200_oos.py: predictions against the H200's measurements.

The analyses (`joined`, `ordering`, `goals`) and the shared tables are
`benchmarks/oos_report.py`'s; `render` lays them out as this round's markdown (pairs measured
once before in `gpu_readme_flow.md`, their earlier latency, the goals without them). Every figure is out of sample: the profile was calibrated by microbenchmarks only,
and the predictions were committed before the card ran the pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks.oos_report import (  # noqa: E402
    GOALS,
    MIN_REAL_DIFF,
    _gb,
    _met,
    _num,
    _rel,
    _value,
    fit_cells,
    goal_lines,
    goals,
    joined,
    miss_lines,
    ordered_pairs,
    ordering,
    ordering_lines,
    pair_lead,
    settled_sentence,
)

__all__ = ["GOALS", "MIN_REAL_DIFF", "goals", "joined", "ordered_pairs", "ordering", "render",
           "write_report"]

ROOT = Path(__file__).resolve().parent.parent


def render(f: pd.DataFrame, order: pd.DataFrame, goal: pd.DataFrame, *,
           env: dict[str, Any], sources: dict[str, str]) -> str:
    e = env.get("environment", {})
    seen = f.earlier_real_s.notna()
    fresh = joined_subset_goals(f[~seen])
    lines = [
        "# Simulator fidelity on the H200, out of sample (issue 14)",
        "",
        "Out of sample: the profile was calibrated by `resbench calibrate` alone "
        "(microbenchmarks; no constant fitted to a pipeline run) and the predictions were "
        "committed before the card ran these pairs.",
        "",
        f"- card: {e.get('card', '?')} ({e.get('nvidia_smi', '')}), torch {e.get('torch', '?')}, "
        f"CUDA {e.get('cuda', '?')}, measured {e.get('date', '?')}",
        f"- predictions: `{sources['predictions']}` (see its `.md` for commit, date, profile sha)",
        f"- measurements: `{sources['measured']}`; command `{env.get('command', '?')}`",
        "- errors are simulated / real - 1; peak memory: simulated peak device bytes against "
        "`torch.cuda.max_memory_allocated`",
        *goal_lines(goal),
        settled_sentence(f, not_run=False),
        f"Without the {int(seen.sum())} pairs measured once before (gpu_readme_flow.md): "
        + "; ".join(f"{g.goal} {_value(g)} ({_met(g)})" for g in fresh.itertuples()) + ".",
        *ordering_lines(order),
        "| pair | plan | predicted | real | latency s sim / real (earlier real) | error % | "
        "peak GB sim / real alloc / real reserved | peak error % | fit agrees |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f.itertuples():
        lines.append(
            f"{pair_lead(r)}"
            f"{' (' + _num(r.earlier_real_s, '.3f') + ')' if r.earlier_real_s == r.earlier_real_s else ''}"
            f" | {_num(r.latency_err_pct, '+.1f')} | "
            f"{_gb(r.pred_peak_device_bytes)} / {_gb(r.peak_allocated_bytes)} / "
            f"{_gb(r.peak_reserved_bytes)} | {_num(r.peak_err_pct, '+.1f')} | {fit_cells(r)[1]} |")
    lines += miss_lines(f)
    other = f[f.schedule_matches == False]  # noqa: E712
    if len(other):
        lines += ["", "Recorded on the device with another schedule than the prediction's "
                  f"(fingerprint differs): {', '.join(other.pair_id)}."]
    return "\n".join(lines) + "\n"


def joined_subset_goals(f: pd.DataFrame) -> pd.DataFrame:
    return goals(f, ordering(f))


def write_report(predictions: Path, measured: Path, out: Path) -> Path:
    pred = pd.read_csv(predictions)
    meas = pd.read_csv(measured)
    env_path = measured.with_suffix(".json")
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    f = joined(pred, meas)
    order = ordering(f)
    text = render(f, order, goals(f, order), env=env,
                  sources={"predictions": _rel(predictions), "measured": _rel(measured)})
    out.write_text(text)
    f.to_csv(out.with_suffix(".csv"), index=False)
    return out
