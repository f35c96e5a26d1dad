"""The `report` mode of benchmarks/gpu_oos3.py: the third round's predictions against the card.

The analyses are the second round's (`benchmarks/gpu_h200_oos_report`: `joined`, `ordering`,
`goals`); this lays them out with the round's own facts (engine, profile, card).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks.gpu_h200_oos_report import (  # noqa: E402
    _gb,
    _met,
    _num,
    _status,
    _value,
    goals,
    joined,
    ordering,
)

ROOT = Path(__file__).resolve().parent.parent


def render(f: pd.DataFrame, order: pd.DataFrame, goal: pd.DataFrame, *,
           env: dict[str, Any], sources: dict[str, str]) -> str:
    e = env.get("environment", {})
    timed = f[f.timed]
    agree = f.fit_agrees.dropna()
    lines = [
        "# Simulator fidelity, third out-of-sample round: the diffusers engine (issue 14)",
        "",
        "Out of sample: the profile was measured by `resbench calibrate` alone "
        "(microbenchmarks, several at the pipelines' own shapes; no constant fitted to a "
        "pipeline run), the predictions were committed before the card ran these pairs, and "
        "no pair was in an earlier round.",
        "",
        f"- card: {e.get('card', '?')} ({e.get('nvidia_smi', '')}), torch {e.get('torch', '?')}, "
        f"CUDA {e.get('cuda', '?')}, diffusers {e.get('diffusers', '?')}, measured "
        f"{e.get('date', '?')}; total {_num(env.get('total_s'), '.0f')} s",
        f"- predictions: `{sources['predictions']}` (its `.md` names commit, date, profile sha)",
        f"- measurements: `{sources['measured']}`; command `{env.get('command', '?')}`",
        "- errors are simulated / real - 1; peak memory: simulated peak device bytes against "
        "`torch.cuda.max_memory_allocated`",
        "",
        "## Goals (out of sample)",
        "",
        "| goal | target | value | |",
        "| --- | --- | ---: | --- |",
        *[f"| {g.goal} | {g.target} | {_value(g)} | {_met(g)} |" for g in goal.itertuples()],
        "",
        f"{len(timed)} pairs timed on both sides of {len(f)}; fit / no-fit agrees on "
        f"{int(agree.sum())} of {len(agree)} pairs the card settled "
        f"({int((f.status == 'skipped').sum())} skipped at the deadline, "
        f"{int((f.status == 'error').sum())} errors, {int(f.status.isna().sum())} not run). "
        f"Mean signed latency error {_num(timed.latency_err_pct.mean(), '+.1f')} %.",
        "",
        "## Ordering within each request shape (out of sample)",
        "",
        "| request | timed plans | plan pairs >= 2 % apart (real) | ordered by the simulator | "
        "share | Kendall tau-b |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {o.request} | {o.plans} | {o.pairs_apart} | {o.ordered} | {_num(o.share)} | "
          f"{_num(o.tau_b)} |" for o in order.itertuples()],
        "",
        "## Per pair (out of sample)",
        "",
        "| pair | plan | predicted | real | latency s sim / real | error % | "
        "peak GB sim / real alloc / real reserved | peak error % | fit agrees |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f.itertuples():
        pred = "fits" if r.pred_fits else ("no fit (host)" if r.pred_fits_device else "no fit")
        agrees = "" if r.fit_agrees != r.fit_agrees else ("yes" if r.fit_agrees else "**no**")
        lines.append(
            f"| {r.pair_id} | {r.plan} | {pred} | {_status(r)} | {_num(r.pred_latency_s, '.3f')}"
            f" / {_num(r.latency_s, '.3f')} | {_num(r.latency_err_pct, '+.1f')} | "
            f"{_gb(r.pred_peak_device_bytes)} / {_gb(r.peak_allocated_bytes)} / "
            f"{_gb(r.peak_reserved_bytes)} | {_num(r.peak_err_pct, '+.1f')} | {agrees} |")
    misses = f[f.fit_agrees == False]  # noqa: E712 - NaN (not settled) is neither
    if len(misses):
        lines += ["", "## Fit / no-fit disagreements", ""]
        lines += [f"- {r.pair_id}: predicted {'fits' if r.pred_fits else 'no fit'}"
                  f"{' (' + str(r.pred_note)[:200] + ')' if r.pred_note == r.pred_note and r.pred_note else ''}; "
                  f"card: {_status(r)}{': ' + str(r.message)[:300] if r.message == r.message else ''}"
                  for r in misses.itertuples()]
    errors = f[f.status == "error"]
    if len(errors):
        lines += ["", "## Errors", ""]
        lines += [f"- {r.pair_id}: {r.failure}: {str(r.message).splitlines()[0][:300]}"
                  for r in errors.itertuples()]
    other = f[f.schedule_matches == False]  # noqa: E712
    if len(other):
        lines += ["", "Recorded on the device with another schedule than the prediction's "
                  f"(fingerprint differs: torch there and here differ): {', '.join(other.pair_id)}."]
    return "\n".join(lines) + "\n"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_report(predictions: Path, measured: Path, out: Path) -> Path:
    pred = pd.read_csv(predictions)
    meas = pd.read_csv(measured)
    env_path = measured.with_suffix(".json")
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    f = joined(pred, meas)
    order = ordering(f)
    out.write_text(render(f, order, goals(f, order), env=env,
                          sources={"predictions": _rel(predictions), "measured": _rel(measured)}))
    f.to_csv(out.with_suffix(".csv"), index=False)
    return out
