"""The `report` mode of the out-of-sample rounds (`benchmarks/oos_round.py`): a round's
predictions against the card.

The analyses are the second round's (`benchmarks/gpu_h200_oos_report`: `joined`, `ordering`,
`goals`); this lays them out with the round's own facts (engine, profile, card), and, where the
predictions carry the caching allocator's modelled reserve (round 4 on), its error against
`torch.cuda.max_memory_reserved` beside the allocated one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from benchmarks.oos_round import Round

ROOT = Path(__file__).resolve().parent.parent


def reserved_errors(f: pd.DataFrame) -> pd.DataFrame:
    """`f` with `reserved_err_pct` (simulated / real peak reserved - 1, in %) where both
    sides timed the pair and the prediction has a modelled reserve (NaN otherwise)."""
    f = f.copy()
    if "pred_peak_reserved_bytes" in f:
        f["reserved_err_pct"] = (100 * (f.pred_peak_reserved_bytes.astype(float)
                                        / f.peak_reserved_bytes - 1)).where(f.timed)
    else:
        f["reserved_err_pct"] = float("nan")
    return f


def render(f: pd.DataFrame, order: pd.DataFrame, goal: pd.DataFrame, *,
           env: dict[str, Any], sources: dict[str, str], title: str) -> str:
    e = env.get("environment", {})
    timed = f[f.timed]
    agree = f.fit_agrees.dropna()
    reserved = timed.reserved_err_pct.abs().dropna()
    lines = [
        f"# Simulator fidelity, {title} (issue 14)",
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
        "`torch.cuda.max_memory_allocated`; reserved: the modelled caching allocator's peak "
        "against `torch.cuda.max_memory_reserved` (where predicted)",
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
        f"Mean signed latency error {_num(timed.latency_err_pct.mean(), '+.1f')} %."
        + (f" Peak reserved: median |error| {_num(reserved.median(), '.1f')} %, max "
           f"{_num(reserved.max(), '.1f')} %, {int((reserved <= 3).sum())} of {len(reserved)} "
           "within 3 %." if len(reserved) else ""),
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
        "allocated GB sim / real | error % | reserved GB sim / real | error % | fit agrees |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f.itertuples():
        pred = "fits" if r.pred_fits else ("no fit (host)" if r.pred_fits_device else "no fit")
        agrees = "" if r.fit_agrees != r.fit_agrees else ("yes" if r.fit_agrees else "**no**")
        lines.append(
            f"| {r.pair_id} | {r.plan} | {pred} | {_status(r)} | {_num(r.pred_latency_s, '.3f')}"
            f" / {_num(r.latency_s, '.3f')} | {_num(r.latency_err_pct, '+.1f')} | "
            f"{_gb(r.pred_peak_device_bytes)} / {_gb(r.peak_allocated_bytes)} | "
            f"{_num(r.peak_err_pct, '+.1f')} | {_gb(getattr(r, 'pred_peak_reserved_bytes', None))}"
            f" / {_gb(r.peak_reserved_bytes)} | {_num(r.reserved_err_pct, '+.1f')} | {agrees} |")
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


def unit_section(rnd: Round, pred: pd.DataFrame, units_path: Path,
                 profile_path: Path | None) -> list[str]:
    """The per-unit compute comparison (`oos_units`) when the run wrote its units file and
    the round's profile is at hand; the schedules are re-recorded (cached) here."""
    if not units_path.is_file() or profile_path is None or not profile_path.is_file():
        return []
    from benchmarks.oos_round import load_schedule
    from benchmarks.oos_units import compare, markdown
    from resbench.hardware import load_profile

    units = pd.read_csv(units_path)
    wanted = set(pred[pred.plan == "all-resident"].request)
    schedules = {s.slug: load_schedule(s) for s in rnd.shapes if s.slug in wanted}
    frame = compare(units, pred, schedules, load_profile(profile_path))
    return markdown(frame)


def write_report(rnd: Round, predictions: Path, measured: Path, out: Path,
                 profile: Path | None = None) -> Path:
    """`profile`: the profile the predictions used, for the per-unit section (default: the
    round's `gpu_oosN_profile.toml` when it exists)."""
    pred = pd.read_csv(predictions)
    meas = pd.read_csv(measured)
    env_path = measured.with_suffix(".json")
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    f = reserved_errors(joined(pred, meas))
    order = ordering(f)
    text = render(f, order, goals(f, order), env=env, title=rnd.title,
                  sources={"predictions": _rel(predictions), "measured": _rel(measured)})
    units = measured.with_name(measured.stem + "_units.csv")
    extra = unit_section(rnd, pred, units, profile or ROOT / rnd.derived_profile)
    out.write_text(text + ("\n".join(extra) + "\n" if extra else ""))
    f.to_csv(out.with_suffix(".csv"), index=False)
    return out
