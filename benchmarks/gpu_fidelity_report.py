"""Simulator fidelity against the real runs of GPU campaigns 1 and 2 (no GPU needed).

Every real (plan, request, budget) run is replayed in the simulator on the profile calibrated
on the same card in campaign 1 (capacity = the budget), and on the shipped `h100-80g` preset
for comparison. Writes benchmarks/results/gpu_fidelity.{md,csv} and gpu_tuned.md.

    PYTHONPATH=. python benchmarks/gpu_fidelity_report.py \\
        --campaign1 benchmarks/results/gpu_manager.json \\
        --campaign2 benchmarks/results/gpu_fidelity_real.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks.gpu_common import load_schedule  # noqa: E402
from resbench.cost import CostModel  # noqa: E402
from resbench.drivers.replay import simulate  # noqa: E402
from resbench.errors import DoesNotFitError  # noqa: E402
from resbench.hardware import HardwareProfile, get_profile, load_profile  # noqa: E402
from resbench.models import get_model  # noqa: E402
from resbench.pipeline import Request  # noqa: E402
from resbench.residency import load_plan  # noqa: E402
from resbench.residency.plan import Plan  # noqa: E402
from resbench.trace import Tracer  # noqa: E402

RESULTS = Path("benchmarks/results")
CALIBRATED = RESULTS / "gpu_h100-80gb-hbm3-calibrated.toml"


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list count as neither concordant nor discordant)."""
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = x[i] - x[j], y[i] - y[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif (a > 0) == (b > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / denom if denom else float("nan")


def kendall_tau_tolerant(x: list[float], y: list[float], tol: float = 0.01) -> float:
    """Kendall's tau over pairs that both lists separate by more than `tol` (relative):
    latencies within run-to-run noise are not an order to get right or wrong."""
    conc = disc = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            a = (x[i] - x[j]) / min(x[i], x[j])
            b = (y[i] - y[j]) / min(y[i], y[j])
            if abs(a) < tol or abs(b) < tol:
                continue
            conc += (a > 0) == (b > 0)
            disc += (a > 0) != (b > 0)
    return (conc - disc) / (conc + disc) if conc + disc else float("nan")


def _plan(name: str, path: str | None) -> Plan:
    if name == "full-card-te-offload":
        from benchmarks.gpu_manager import full_card_plan

        return full_card_plan()
    return load_plan(path or f"strategies/presets/{name}.toml")


def real_pairs(c1: dict[str, Any], c2: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per real run that finished or ran out of memory."""
    spec = get_model("wan2.2")
    out: list[dict[str, Any]] = []
    c1_main = Request.for_model(spec, height=480, width=832, frames=81, steps=2, cfg=True)
    for r in c1["rows"]:
        if r.get("phase") not in ("budget", "fullcard") or r.get("plan") in ("probe", "warm-up", None):
            continue
        if r["status"] not in ("ok", "oom"):
            continue
        budget = None if r.get("budget") == "full card" else int(float(r["budget"].removesuffix("GB")) * 1e9)
        out.append({"campaign": 1, "request": c1_main, "plan": r["plan"], "plan_path": None,
                    "budget": r["budget"].replace("full card", "full"), "budget_bytes": budget,
                    "status": r["status"], "real_s": r.get("latency_s"),
                    "real_peak": r.get("peak_device_bytes"),
                    "real_reserved": r.get("peak_reserved_bytes")})
    over = [r for r in c1["rows"] if r.get("phase") == "overhead" and r.get("plan") == "all-resident"
            and r.get("status") == "ok"]
    if over:
        small = replace(c1_main, frames=int(over[0]["request"].split("x")[2].split()[0]))
        out.append({"campaign": 1, "request": small, "plan": "all-resident", "plan_path": None,
                    "budget": "full", "budget_bytes": None, "status": "ok",
                    "real_s": statistics.median(r["latency_s"] for r in over),
                    "real_peak": over[0].get("peak_device_bytes"),
                    "real_reserved": over[0].get("peak_reserved_bytes")})
    for r in c2.get("rows", []):
        if r.get("phase") != "run" or r["status"] not in ("ok", "oom"):
            continue
        out.append({"campaign": 2, "request": Request(**r["request_dict"]), "plan": r["plan"],
                    "plan_path": r["plan_path"], "budget": r["budget"],
                    "budget_bytes": r["budget_bytes"], "status": r["status"],
                    "real_s": r.get("latency_s"), "real_peak": r.get("peak_device_bytes"),
                    "real_reserved": r.get("peak_reserved_bytes")})
    return out


def unit_class(call: Any) -> str:
    return f"{call.component}.{'rest' if call.unit == 'rest' else 'blocks'}"


def compute_factors(schedule: Any, profile: HardwareProfile,
                    real: dict[str, list[float]]) -> dict[str, float]:
    """Real / modelled compute seconds per (component, blocks | rest), from one real run."""
    model: dict[str, float] = {}
    for call, t in zip(schedule.calls, CostModel(profile).call_times(schedule.calls), strict=True):
        model[unit_class(call)] = model.get(unit_class(call), 0.0) + t
    return {k: real[k][1] / model[k] for k in real if model.get(k)}


def measured_times(schedule: Any, profile: HardwareProfile, factors: dict[str, float]) -> list[float]:
    times = CostModel(profile).call_times(schedule.calls)
    return [t * factors.get(unit_class(c), 1.0) for c, t in zip(schedule.calls, times, strict=True)]


def sim_one(row: dict[str, Any], profile: HardwareProfile,
            factors: dict[str, float] | None = None) -> dict[str, Any]:
    spec = get_model("wan2.2")
    schedule = load_schedule(spec, row["request"], scale=1.0, device="cuda")
    plan = _plan(row["plan"], row["plan_path"])
    times = measured_times(schedule, profile, factors) if factors else None
    try:
        res = simulate(schedule, plan, profile, capacity_bytes=row["budget_bytes"],
                       tracer=Tracer(enabled=False), call_times_s=times)
    except DoesNotFitError as exc:
        return {"sim_fits": False, "sim_s": None, "sim_peak": None, "sim_note": str(exc)[:160]}
    return {"sim_fits": True, "sim_s": res.latency_s, "sim_peak": res.peak_device_bytes,
            "sim_compute_s": res.compute_s, "sim_stall_s": res.stall_s}


def label(r: Request) -> str:
    return f"{r.height}x{r.width}x{r.frames} s{r.steps}"


def build(pairs: list[dict[str, Any]], real_compute: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    """`real_compute`: request label -> compute_by_unit of one real run of that request."""
    cal = load_profile(CALIBRATED)
    pre = get_profile("h100-80g")
    spec = get_model("wan2.2")
    rows = []
    for p in pairs:
        a = sim_one(p, cal)
        b = sim_one(p, pre)
        measured = real_compute.get(label(p["request"]))
        c = {}
        if measured:
            sched = load_schedule(spec, p["request"], scale=1.0, device="cuda")
            c = sim_one(p, cal, compute_factors(sched, cal, measured))
        rows.append({"campaign": p["campaign"], "request": label(p["request"]), "budget": p["budget"],
                     "plan": p["plan"], "real_status": p["status"], "real_s": p["real_s"],
                     "sim_s": a["sim_s"], "sim_fits": a["sim_fits"],
                     "sim_preset_s": b["sim_s"], "sim_measured_s": c.get("sim_s"), "real_peak_gb": (p["real_peak"] or 0) / 1e9 or None,
                     "real_reserved_gb": (p["real_reserved"] or 0) / 1e9 or None,
                     "sim_peak_gb": (a["sim_peak"] or 0) / 1e9 or None,
                     "sim_note": a.get("sim_note", "")})
    f = pd.DataFrame(rows)
    f["err_pct"] = 100 * (f.sim_s / f.real_s - 1)
    f["err_preset_pct"] = 100 * (f.sim_preset_s / f.real_s - 1)
    f["err_measured_pct"] = 100 * (f.sim_measured_s.astype(float) / f.real_s - 1)
    return f


def summary(f: pd.DataFrame) -> dict[str, Any]:
    both = f[(f.real_status == "ok") & f.sim_fits]
    err = both.err_pct.abs()
    meas = both[both.sim_measured_s.notna()]
    groups = []
    for _, g in both.groupby(["request", "budget"]):
        if len(g) >= 2:
            groups.append((kendall_tau(list(g.real_s), list(g.sim_s)), len(g)))
    fit_agree = int(((f.real_status == "ok") == f.sim_fits).sum())
    return {
        "pairs": len(f), "pairs_timed": len(both),
        "median_abs_err_pct": float(err.median()), "max_abs_err_pct": float(err.max()),
        "median_abs_err_preset_pct": float(both.err_preset_pct.abs().median()),
        "pairs_measured": int(meas.shape[0]),
        "median_abs_err_measured_pct": float(meas.err_measured_pct.abs().median()),
        "max_abs_err_measured_pct": float(meas.err_measured_pct.abs().max()),
        "kendall_tau_measured": kendall_tau(list(meas.real_s), list(meas.sim_measured_s)),
        "mean_signed_err_pct": float(both.err_pct.mean()),
        "kendall_tau_all": kendall_tau(list(both.real_s), list(both.sim_s)),
        "kendall_tau_all_1pct_ties": kendall_tau_tolerant(list(both.real_s), list(both.sim_s)),
        "kendall_tau_measured_1pct_ties": kendall_tau_tolerant(list(meas.real_s),
                                                               list(meas.sim_measured_s)),
        "kendall_tau_within": groups,
        "fit_agreement": f"{fit_agree}/{len(f)}",
    }


def calibration_runs(c1_trace: Path, c2: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per request: per-unit-class real compute of its sglang-wan2.2 run at 48 GB."""
    from benchmarks.gpu_fidelity import compute_by_unit

    out: dict[str, dict[str, list[float]]] = {}
    if c1_trace.is_file():
        out["480x832x81 s2"] = compute_by_unit(pd.read_csv(c1_trace))
    for r in c2.get("rows", []):
        if (r.get("phase") == "run" and r["status"] == "ok" and r["plan"] == "sglang-wan2.2"
                and r["budget"] == "48GB"):
            out[label(Request(**r["request_dict"]))] = r["compute_by_unit"]
    return out


def fmt(x: Any, spec: str = ".2f") -> str:
    return "" if x is None or x != x else format(x, spec)


def pairs_table(f: pd.DataFrame) -> list[str]:
    lines = ["| # | request | budget | plan | real | real s | sim s (err %) | sim, measured compute s "
             "(err %) | peak alloc GB real / sim | reserved GB |", "|" + " --- |" * 10]
    for i, r in f.iterrows():
        real = r.real_status if r.real_status != "ok" else "ran"
        sim = "does not fit" if not r.sim_fits else f"{fmt(r.sim_s)} ({fmt(r.err_pct, '+.1f')})"
        meas = "" if r.sim_measured_s is None or r.sim_measured_s != r.sim_measured_s else \
            f"{fmt(r.sim_measured_s)} ({fmt(r.err_measured_pct, '+.1f')})"
        if r.calibration:
            meas += " (calibration run)"
        lines.append(f"| {i} | {r.request} | {r.budget} | {r.plan} | {real} | {fmt(r.real_s)} | {sim} | "
                     f"{meas} | {fmt(r.real_peak_gb)} / {fmt(r.sim_peak_gb)} | {fmt(r.real_reserved_gb)} |")
    return lines


def tuned_table(f: pd.DataFrame) -> list[str]:
    main = f[(f.request == "480x832x81 s4") & (f.campaign == 2)]
    lines = []
    for budget in ("48GB", "24GB", "full"):
        g = main[main.budget == budget]
        if g.empty:
            continue
        tuned = g[g.plan.str.startswith("tuned-")]
        base = float(tuned.real_s.iloc[0]) if len(tuned) and tuned.real_status.iloc[0] == "ok" else None
        lines += [f"### {budget if budget != 'full' else 'full card (85.0 GB, no cap)'}", "",
                  "| plan | real s | vs tuned | sim s | peak alloc GB | peak reserved GB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for _, r in g.sort_values("real_s").iterrows():
            vs = f"{r.real_s / base:.3f}x" if base and r.real_s == r.real_s else ""
            lines.append(f"| {r.plan} | {fmt(r.real_s)} | {vs} | {fmt(r.sim_s)} | "
                         f"{fmt(r.real_peak_gb)} | {fmt(r.real_reserved_gb)} |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--campaign1", default=str(RESULTS / "gpu_manager.json"))
    ap.add_argument("--campaign2", default=str(RESULTS / "gpu_fidelity_real.json"))
    ap.add_argument("--trace1", default=str(RESULTS / "gpu_trace_sglang-wan2.2_48GB.csv"))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    c1 = json.loads(Path(args.campaign1).read_text())
    c2 = json.loads(Path(args.campaign2).read_text()) if Path(args.campaign2).is_file() else {}
    f = build(real_pairs(c1, c2), calibration_runs(Path(args.trace1), c2))
    f["calibration"] = (f.plan == "sglang-wan2.2") & (f.budget == "48GB")
    f.to_csv(Path(args.out) / "gpu_fidelity.csv", index=False)
    s = summary(f)
    s_out = summary(f[~f.calibration])
    (Path(args.out) / "gpu_fidelity_summary.json").write_text(json.dumps(
        {"all_pairs": s, "without_calibration_runs": s_out}, indent=1, default=str))
    print(f.drop(columns=["sim_note"]).to_string())
    print(json.dumps({"all_pairs": s, "without_calibration_runs": s_out}, indent=1, default=str))
    (Path(args.out) / "gpu_fidelity_pairs.md").write_text("\n".join(pairs_table(f)) + "\n")
    (Path(args.out) / "gpu_tuned_table.md").write_text("\n".join(tuned_table(f)) + "\n")


if __name__ == "__main__":
    main()
