"""Out-of-sample check of the fixed cost model: (plan, request) pairs no campaign ran.

The simulator's predictions are written and committed first (``--predict``, CPU only, on the
calibrated H100 profile with the campaign-2 constants), then the same pairs run on the card
(one process; weights pinned once; each run starts from an emptied allocator under its own
budget), as in benchmarks/gpu_fidelity.py.

    PYTHONPATH=. python benchmarks/gpu_oos.py --predict                 # here, before the run
    PYTHONPATH=. python benchmarks/gpu_oos.py --out $OUT --deadline-s 400   # GPU machine
    PYTHONPATH=. python benchmarks/gpu_oos.py --report --real gpu_oos_real.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_common import (  # noqa: E402
    Rows,
    attempt,
    environment,
    load_schedule,
    request_label,
    result_fields,
    run_phase,
)
from resbench.models import get_model  # noqa: E402
from resbench.pipeline import Request  # noqa: E402
from resbench.units import parse_bytes  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
RESULTS = Path("benchmarks/results")
PREDICTED = RESULTS / "gpu_oos_predicted.json"
REQUESTS = {"720x1280x33 s2": (720, 1280, 33, 2), "480x832x49 s3": (480, 832, 49, 3)}
# (request, plan, budget) in run order: cheap ones first, so a deadline cuts the dearest.
PAIRS = [("480x832x49 s3", "sglang-wan2.2", "24GB"),
         ("480x832x49 s3", "kijai-block-swap", "48GB"),
         ("720x1280x33 s2", "sglang-wan2.2", "48GB"),
         ("720x1280x33 s2", "diffusers-group-offload", "48GB"),
         ("480x832x49 s3", "diffusers-model-offload", "48GB")]


def request(key: str) -> Request:
    h, w, f, s = REQUESTS[key]
    return Request.for_model(get_model("wan2.2"), height=h, width=w, frames=f, steps=s, cfg=True)


def plan_path(plan: str) -> str:
    return f"strategies/presets/{plan}.toml"


def predict() -> list[dict[str, Any]]:
    from benchmarks.gpu_fidelity_report import CALIBRATED, sim_one
    from resbench.hardware import get_profile, load_profile

    cal, pre = load_profile(CALIBRATED), get_profile("h100-80g")
    out = []
    for key, plan, budget in PAIRS:
        row = {"request": request(key), "plan": plan, "plan_path": plan_path(plan),
               "budget_bytes": parse_bytes(budget)}
        a, b = sim_one(row, cal), sim_one(row, pre)
        out.append({"request": key, "plan": plan, "budget": budget, "sim_fits": a["sim_fits"],
                    "sim_s": a["sim_s"], "sim_peak_gb": (a["sim_peak"] or 0) / 1e9 or None,
                    "sim_compute_s": a.get("sim_compute_s"), "sim_stall_s": a.get("sim_stall_s"),
                    "sim_preset_s": b["sim_s"], "profile": str(CALIBRATED)})
    return out


def phase_all(args: argparse.Namespace, rows: Rows) -> None:
    from benchmarks.gpu_fidelity import compute_by_unit
    from resbench.measure import measure_real, prepare_weights

    spec = get_model("wan2.2")
    expect = {(p["request"], p["plan"], p["budget"]): p["sim_s"] or 5.0
              for p in json.loads(PREDICTED.read_text())["pairs"]}
    t0 = time.perf_counter()
    weights = prepare_weights(spec, scale=1.0)
    common: dict[str, Any] = {"scale": 1.0, "device": "cuda", "weights": weights}
    rows.add({"phase": "weights", "status": "ok", "wall_s": time.perf_counter() - t0,
              "pinned_bytes": weights.host.pinned_bytes(), **environment()})
    schedules = {k: load_schedule(spec, request(k), scale=1.0, device="cuda") for k in REQUESTS}
    for key in REQUESTS:  # one untimed run per request shape (kernel loading)
        one = replace(request(key), steps=1, cfg=False)
        sched = load_schedule(spec, one, scale=1.0, device="cuda")
        attempt(rows, {"phase": "warm-up", "request": request_label(one)},
                lambda one=one, sched=sched: measure_real(
                    spec, one, "sglang-wan2.2", budget_bytes=None, warmup=False, schedule=sched,
                    **common))
    for key, plan, budget in PAIRS:
        r = request(key)
        base = {"phase": "run", "request": key, "request_dict": asdict(r), "plan": plan,
                "plan_path": plan_path(plan), "budget": budget, "budget_bytes": parse_bytes(budget)}
        if time.time() + 1.15 * expect[(key, plan, budget)] + 10 > args.deadline:
            rows.add({**base, "status": "skipped", "message": "deadline"})
            continue
        t0 = time.perf_counter()
        res = attempt(rows, base, lambda r=r, plan=plan, b=base["budget_bytes"], key=key:
                      measure_real(spec, r, plan_path(plan), budget_bytes=b, warmup=False,
                                   schedule=schedules[key], **common))
        if res is not None:
            rows.add({**base, "status": "ok", "wall_s": time.perf_counter() - t0,
                      **result_fields(res), "compute_by_unit": compute_by_unit(res["trace"])})
    weights.host.close()


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def report(real_path: Path) -> list[str]:
    pred = {(p["request"], p["plan"], p["budget"]): p
            for p in json.loads(PREDICTED.read_text())["pairs"]}
    doc = json.loads(real_path.read_text())
    lines = ["| request | budget | plan | real | real s | predicted s (err %) | h100-80g preset s "
             "(err %) | peak alloc GB real / predicted |", "|" + " --- |" * 8]
    errs = []
    for r in doc["rows"]:
        if r.get("phase") != "run":
            continue
        p = pred[(r["request"], r["plan"], r["budget"])]
        real = r.get("latency_s")
        cell = "does not fit" if not p["sim_fits"] else f"{p['sim_s']:.2f}"
        pre = "" if p["sim_preset_s"] is None else f"{p['sim_preset_s']:.2f}"
        if real and p["sim_s"]:
            err = 100 * (p["sim_s"] / real - 1)
            errs.append(err)
            cell += f" ({err:+.1f})"
            pre += f" ({100 * (p['sim_preset_s'] / real - 1):+.1f})" if p["sim_preset_s"] else ""
        peak = r.get("peak_device_bytes")
        status = "ran" if r["status"] == "ok" else r["status"]
        lines.append(f"| {r['request']} | {r['budget']} | {r['plan']} | {status} | {_num(real)} | "
                     f"{cell} | {pre} | {_num(peak and peak / 1e9)} / {_num(p['sim_peak_gb'])} |")
    if errs:
        a = sorted(abs(e) for e in errs)
        med = a[len(a) // 2] if len(a) % 2 else (a[len(a) // 2 - 1] + a[len(a) // 2]) / 2
        lines += ["", f"{len(errs)} timed pairs: median abs error {med:.1f} %, max {a[-1]:.1f} %, "
                  f"mean signed {sum(errs) / len(errs):+.1f} %."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predict", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--real", default=str(RESULTS / "gpu_oos_real.json"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--deadline-s", type=float, default=400.0)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.predict:
        pairs = predict()
        PREDICTED.write_text(json.dumps({"pairs": pairs}, indent=1))
        for p in pairs:
            print(p)
        return
    if args.report:
        print("\n".join(report(Path(args.real))))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows_path = Path(args.out) / "gpu_oos_real.json"
    if args.phase:
        phase_all(args, Rows(rows_path))
        return
    deadline = time.time() + args.deadline_s
    env = environment()
    run_phase(SCRIPT, ["--phase", "all", "--out", args.out, "--deadline", str(deadline)],
              timeout_s=args.deadline_s + 40)
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    rows_path.write_text(json.dumps({"environment": env, "command": " ".join(sys.argv),
                                     "rows": rows}, indent=1))
    for r in rows:
        print(r.get("phase"), r.get("request"), r.get("plan"), r.get("budget"), r.get("status"),
              r.get("latency_s"), r.get("peak_device_bytes"))


if __name__ == "__main__":
    main()
