"""The `report` mode of benchmarks/gpu_h200_oos.py: predictions against the H200's measurements.

Analyses return DataFrames (`joined`, `ordering`, `goals`); `render` lays them out as
markdown. Every figure is out of sample: the profile was calibrated by microbenchmarks only,
and the predictions were committed before the card ran the pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks.gpu_fidelity_report import kendall_tau  # noqa: E402

MIN_REAL_DIFF = 0.02
"""Plan pairs whose real latencies differ by less than this (relative) are not an order."""
GOALS = (("median |latency error| %", "<=", 3.0), ("max |latency error| %", "<=", 8.0),
         ("max |peak device memory error| %", "<=", 3.0),
         ("share of >=2 %-different plan pairs ordered", ">=", 0.90))
ROOT = Path(__file__).resolve().parent.parent


def joined(pred: pd.DataFrame, meas: pd.DataFrame) -> pd.DataFrame:
    """One row per predicted pair with its measurement: errors (simulated / real - 1, in %)
    where both sides timed it, and whether fit / no-fit agrees where the card said."""
    f = pred.merge(meas, on="pair_id", how="left", validate="one_to_one",
                   suffixes=("", "_run"))
    known = f.status.isin(["ok", "no_fit"])
    f["schedule_matches"] = (f.schedule == f.schedule_run).where(f.schedule_run.notna())
    f["real_fits"] = (f.status == "ok").where(known)
    f["fit_agrees"] = (f.real_fits == f.pred_fits).where(known)
    f["timed"] = (f.status == "ok") & f.pred_fits.astype(bool)
    f["latency_err_pct"] = (100 * (f.pred_latency_s / f.latency_s - 1)).where(f.timed)
    f["peak_err_pct"] = (100 * (f.pred_peak_device_bytes / f.peak_allocated_bytes - 1)
                         ).where(f.timed)
    return f


def ordered_pairs(real: list[float], sim: list[float],
                  min_diff: float = MIN_REAL_DIFF) -> tuple[int, int]:
    """(pairs whose real values differ by >= `min_diff` relative, of them the ones `sim`
    puts in the same order; a simulated tie is not an order)."""
    n = right = 0
    for i in range(len(real)):
        for j in range(i + 1, len(real)):
            d = real[i] - real[j]
            if abs(d) < min_diff * min(real[i], real[j]):
                continue
            n += 1
            right += (sim[i] - sim[j]) * d > 0
    return n, right


def ordering(f: pd.DataFrame) -> pd.DataFrame:
    """Per request shape: timed plans, plan pairs >= 2 % apart for real, ordered by the
    simulator, and Kendall tau-b over all the shape's timed plans."""
    rows = []
    for request, g in f[f.timed].groupby("request", sort=False):
        real, sim = list(g.latency_s), list(g.pred_latency_s)
        n, right = ordered_pairs(real, sim)
        rows.append({"request": request, "plans": len(g), "pairs_apart": n, "ordered": right,
                     "share": right / n if n else float("nan"),
                     "tau_b": kendall_tau(real, sim) if len(g) > 1 else float("nan")})
    return pd.DataFrame(rows, columns=["request", "plans", "pairs_apart", "ordered", "share",
                                       "tau_b"])


def goals(f: pd.DataFrame, order: pd.DataFrame) -> pd.DataFrame:
    """The issue's goals, each with its value and whether it was met."""
    err = f.latency_err_pct.abs().dropna()
    peak = f.peak_err_pct.abs().dropna()
    apart = int(order.pairs_apart.sum())
    values = [err.median() if len(err) else float("nan"), err.max() if len(err) else float("nan"),
              peak.max() if len(peak) else float("nan"),
              order.ordered.sum() / apart if apart else float("nan")]
    rows = []
    for (goal, op, target), value in zip(GOALS, values, strict=True):
        met = value <= target if op == "<=" else value >= target
        rows.append({"goal": goal, "target": f"{op} {target:g}", "value": value,
                     "met": bool(met) if value == value else None})
    return pd.DataFrame(rows)


def _num(x: Any, spec: str = ".2f") -> str:
    return "" if x is None or x != x else format(x, spec)


def _value(g: Any) -> str:
    return _num(g.value, ".2f" if g.goal.startswith("share") else ".1f")


def _met(g: Any) -> str:
    return "no data" if g.met is None else ("met" if g.met else "missed")


def _gb(x: Any) -> str:
    return "" if x is None or x != x else f"{x / 1e9:.2f}"


def _status(r: Any) -> str:
    if r.status != r.status:
        return "not run"
    return {"ok": "ran", "no_fit": f"no fit ({r.failure})"}.get(r.status, r.status)


def render(f: pd.DataFrame, order: pd.DataFrame, goal: pd.DataFrame, *,
           env: dict[str, Any], sources: dict[str, str]) -> str:
    e = env.get("environment", {})
    timed = f[f.timed]
    agree = f.fit_agrees.dropna()
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
        f"{int((f.status == 'error').sum())} errors). Mean signed latency error "
        f"{_num(timed.latency_err_pct.mean(), '+.1f')} %.",
        f"Without the {int(seen.sum())} pairs measured once before (gpu_readme_flow.md): "
        + "; ".join(f"{g.goal} {_value(g)} ({_met(g)})" for g in fresh.itertuples()) + ".",
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
        "| pair | plan | predicted | real | latency s sim / real (earlier real) | error % | "
        "peak GB sim / real alloc / real reserved | peak error % | fit agrees |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f.itertuples():
        pred = "fits" if r.pred_fits else ("no fit (host)" if r.pred_fits_device else "no fit")
        agrees = "" if r.fit_agrees != r.fit_agrees else ("yes" if r.fit_agrees else "**no**")
        lines.append(
            f"| {r.pair_id} | {r.plan} | {pred} | {_status(r)} | {_num(r.pred_latency_s, '.3f')}"
            f" / {_num(r.latency_s, '.3f')}"
            f"{' (' + _num(r.earlier_real_s, '.3f') + ')' if r.earlier_real_s == r.earlier_real_s else ''}"
            f" | {_num(r.latency_err_pct, '+.1f')} | "
            f"{_gb(r.pred_peak_device_bytes)} / {_gb(r.peak_allocated_bytes)} / "
            f"{_gb(r.peak_reserved_bytes)} | {_num(r.peak_err_pct, '+.1f')} | {agrees} |")
    misses = f[f.fit_agrees == False]  # noqa: E712 - NaN (not settled) is neither
    if len(misses):
        lines += ["", "## Fit / no-fit disagreements", ""]
        lines += [f"- {r.pair_id}: predicted {'fits' if r.pred_fits else 'no fit'}"
                  f"{' (' + str(r.pred_note)[:200] + ')' if r.pred_note == r.pred_note and r.pred_note else ''}; "
                  f"card: {_status(r)}{': ' + str(r.message)[:300] if r.message == r.message else ''}"
                  for r in misses.itertuples()]
    other = f[f.schedule_matches == False]  # noqa: E712
    if len(other):
        lines += ["", "Recorded on the device with another schedule than the prediction's "
                  f"(fingerprint differs): {', '.join(other.pair_id)}."]
    return "\n".join(lines) + "\n"


def joined_subset_goals(f: pd.DataFrame) -> pd.DataFrame:
    return goals(f, ordering(f))


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
    text = render(f, order, goals(f, order), env=env,
                  sources={"predictions": _rel(predictions), "measured": _rel(measured)})
    out.write_text(text)
    f.to_csv(out.with_suffix(".csv"), index=False)
    return out
