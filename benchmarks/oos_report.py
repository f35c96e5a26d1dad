"""The `report` mode of the out-of-sample rounds (`benchmarks/oos_round.py`): a round's
predictions against the card.

The analyses (`joined`, `ordering`, `goals`) and the tables every round shares are here
(round 2's `benchmarks/gpu_h200_oos_report.py` lays them out its own way); `render` lays them out with the round's own facts (engine, profile, card), and, where the
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

from benchmarks.gpu_fidelity_report import kendall_tau  # noqa: E402

if TYPE_CHECKING:
    from benchmarks.oos_round import Round

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


def goal_lines(goal: pd.DataFrame) -> list[str]:
    """The goals section: heading and table."""
    return ["", "## Goals (out of sample)", "", "| goal | target | value | |", "| --- | --- | ---: | --- |",
            *[f"| {g.goal} | {g.target} | {_value(g)} | {_met(g)} |" for g in goal.itertuples()]]


def settled_sentence(f: pd.DataFrame, *, not_run: bool = True) -> str:
    """Pairs timed, fit / no-fit agreement, skipped and failed pairs, mean signed latency error
    (`not_run`: count the pairs the card never reached; round 2's report did not)."""
    timed, agree = f[f.timed], f.fit_agrees.dropna()
    return (f"\n{len(timed)} pairs timed on both sides of {len(f)}; fit / no-fit agrees on "
            f"{int(agree.sum())} of {len(agree)} pairs the card settled "
            f"({int((f.status == 'skipped').sum())} skipped at the deadline, "
            f"{int((f.status == 'error').sum())} errors"
            + (f", {int(f.status.isna().sum())} not run" if not_run else "") + "). "
            f"Mean signed latency error {_num(timed.latency_err_pct.mean(), '+.1f')} %.")


def ordering_lines(order: pd.DataFrame) -> list[str]:
    """The ordering section (one row per request shape), and the per-pair section's heading."""
    return ["", "## Ordering within each request shape (out of sample)", "",
            "| request | timed plans | plan pairs >= 2 % apart (real) | ordered by the simulator | "
            "share | Kendall tau-b |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *[f"| {o.request} | {o.plans} | {o.pairs_apart} | {o.ordered} | {_num(o.share)} | "
              f"{_num(o.tau_b)} |" for o in order.itertuples()],
            "", "## Per pair (out of sample)", ""]


def pair_lead(r: Any) -> str:
    """A per-pair row's first cells: pair, plan, predicted fit, the card's outcome, and the
    latency simulated / real."""
    return (f"| {r.pair_id} | {r.plan} | {fit_cells(r)[0]} | {_status(r)} | "
            f"{_num(r.pred_latency_s, '.3f')} / {_num(r.latency_s, '.3f')}")


def fit_cells(r: Any) -> tuple[str, str]:
    """A pair's predicted fit and whether the card agreed (blank: not settled)."""
    pred = "fits" if r.pred_fits else ("no fit (host)" if r.pred_fits_device else "no fit")
    agrees = "" if r.fit_agrees != r.fit_agrees else ("yes" if r.fit_agrees else "**no**")
    return pred, agrees


def miss_lines(f: pd.DataFrame) -> list[str]:
    """The fit / no-fit disagreements section (nothing when there is none)."""
    misses = f[f.fit_agrees == False]  # noqa: E712 - NaN (not settled) is neither
    if not len(misses):
        return []
    return ["", "## Fit / no-fit disagreements", "",
            *[f"- {r.pair_id}: predicted {'fits' if r.pred_fits else 'no fit'}"
              f"{' (' + str(r.pred_note)[:200] + ')' if r.pred_note == r.pred_note and r.pred_note else ''}; "
              f"card: {_status(r)}{': ' + str(r.message)[:300] if r.message == r.message else ''}"
              for r in misses.itertuples()]]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


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
        *goal_lines(goal),
        settled_sentence(f)
        + (f" Peak reserved: median |error| {_num(reserved.median(), '.1f')} %, max "
           f"{_num(reserved.max(), '.1f')} %, {int((reserved <= 3).sum())} of {len(reserved)} "
           "within 3 %." if len(reserved) else ""),
        *ordering_lines(order),
        "| pair | plan | predicted | real | latency s sim / real | error % | "
        "allocated GB sim / real | error % | reserved GB sim / real | error % | fit agrees |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in f.itertuples():
        lines.append(
            f"{pair_lead(r)} | {_num(r.latency_err_pct, '+.1f')} | "
            f"{_gb(r.pred_peak_device_bytes)} / {_gb(r.peak_allocated_bytes)} | "
            f"{_num(r.peak_err_pct, '+.1f')} | {_gb(getattr(r, 'pred_peak_reserved_bytes', None))}"
            f" / {_gb(r.peak_reserved_bytes)} | {_num(r.reserved_err_pct, '+.1f')} | {fit_cells(r)[1]} |")
    lines += miss_lines(f)
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
