"""Issue 14: the simulator on a card it was never fitted to (the H200), out of sample.

The H200 profile (`benchmarks/results/h200-calibrated.toml`) comes from `resbench calibrate`
alone: microbenchmarks, no constant fitted to a pipeline run. Three modes:

* ``predict`` (CPU, here): simulate every (plan, request, budget) pair on that profile —
  presets, and the best plans of a few `tune` studies run in the simulator on it — and write
  ``benchmarks/results/gpu_h200_oos_predictions.{csv,md}``. These are committed before the
  GPU run.
* ``measure`` (the H200): run the committed pairs on the card with `CudaBackend` (warm-up,
  then the timed run), weights built once per model, and write one row per pair, flushed, to
  ``$OUT/gpu_h200_oos_measured.csv``. ``--device cpu --scale 0.02`` runs the same loop
  through `CpuBackend` on tiny requests (plumbing only; its numbers mean nothing).
* ``report`` (CPU): join both into ``benchmarks/results/gpu_h200_oos.md``: errors, fit
  agreement, ordering within each request shape, and the issue's goals met or missed.

    PYTHONPATH=. python benchmarks/gpu_h200_oos.py predict
    PYTHONPATH=. OUT=$OUT python benchmarks/gpu_h200_oos.py measure      # on the H200
    PYTHONPATH=. python benchmarks/gpu_h200_oos.py report --measured PATH/gpu_h200_oos_measured.csv
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks.gpu_h200_oos_measure import MEASURED_NAME, measure  # noqa: E402
from benchmarks.gpu_h200_oos_report import write_report  # noqa: E402
from benchmarks.oos_measure import fingerprint  # noqa: E402
from benchmarks.oos_round import (  # noqa: E402
    FULL,
    TUNE_SEED,
    TUNE_TRIALS,
    Shape,
    budget_bytes,
    git_head,
    host_bytes,
    in_run_order,
    load_schedule,
    pair_id,
    pair_row,
    simulated,
    tuned_plans,
)
from resbench.devices.cuda import HOST_RESERVE_BYTES  # noqa: E402
from resbench.errors import DoesNotFitError  # noqa: E402
from resbench.hardware import HardwareProfile, load_profile  # noqa: E402
from resbench.models import get_model  # noqa: E402
from resbench.residency.plan import Plan  # noqa: E402
from resbench.resources import resolve_plan  # noqa: E402
from resbench.schedule import Schedule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks/results")
PROFILE = RESULTS / "h200-calibrated.toml"
PREDICTIONS = RESULTS / "gpu_h200_oos_predictions.csv"
PLANS = RESULTS / "gpu_h200_oos_plans"
README_TUNED = RESULTS / "gpu_readme_flow" / "tuned-48GB.toml"


LIGHT = Shape("wan2.2", 480, 832, 17, 4, True)
HEAVY = Shape("wan2.2", 480, 832, 33, 2, True)
IMAGE = Shape("flux.1-dev", 1024, 1024, 1, 8, False)

# (shape, preset, budget). Plans the simulator expects not to fit are here on purpose (fit /
# no-fit agreement); `pred_margin_bytes` shows which pairs are near the line, either side.
PRESET_PAIRS: list[tuple[Shape, str, str]] = [
    (IMAGE, "all-resident", FULL), (IMAGE, "all-resident", "48GB"),
    (IMAGE, "kijai-block-swap", "16GB"), (IMAGE, "sglang-wan2.2", "16GB"),
    (IMAGE, "diffusers-group-offload", "24GB"),
    (IMAGE, "diffusers-model-offload", "48GB"),  # pageable copies: fits a 128 GiB host
    (IMAGE, "all-resident", "24GB"), (IMAGE, "diffusers-model-offload", "24GB"),
    (IMAGE, "all-resident", "16GB"),
    (LIGHT, "all-resident", FULL), (LIGHT, "sglang-wan2.2", "48GB"),
    (LIGHT, "kijai-block-swap", "48GB"), (LIGHT, "diffusers-group-offload", "48GB"),
    (LIGHT, "all-resident", "80GB"), (LIGHT, "all-resident", "48GB"),
    (LIGHT, "kijai-block-swap", "24GB"), (LIGHT, "kijai-block-swap", "16GB"),
    (LIGHT, "diffusers-model-offload", "48GB"),  # 69 GB pageable beside 69 GB pinned
    (HEAVY, "all-resident", FULL), (HEAVY, "sglang-wan2.2", "24GB"),
    (HEAVY, "kijai-block-swap", "24GB"), (HEAVY, "diffusers-group-offload", "16GB"),
    (HEAVY, "all-resident", "80GB"), (HEAVY, "all-resident", "48GB"),
    (HEAVY, "kijai-block-swap", "16GB"),
]
# (shape, budget, plans) tuned in the simulator on the calibrated profile: the study's best
# `plans` distinct plans not already listed at that budget join the pairs. At 48 GB the
# readme flow's trial 32 is listed; its trial 34 ties with it and ran out of memory on the card.
TUNED_CELLS: list[tuple[Shape, str, int]] = [(LIGHT, "48GB", 1), (HEAVY, "24GB", 1),
                                             (IMAGE, "16GB", 2)]
# Pairs measured once before on this card (gpu_readme_flow.md): outcome known, profile not fitted.
EARLIER_REAL_S = {"wan2.2-480x832x17s4-full-all-resident": 6.692,
                  "wan2.2-480x832x17s4-48GB-sglang-wan2.2": 6.970,
                  "wan2.2-480x832x17s4-48GB-kijai-block-swap": 6.979,
                  "wan2.2-480x832x17s4-48GB-diffusers-group-offload": 7.053,
                  "wan2.2-480x832x17s4-48GB-readme-tuned": 6.472}

# GPU-time estimate of `measure`: each pair that fits runs twice (warm-up, then timed).
REAL_OVER_SIM = 1.2  # the calibrated simulator was 10-19 % low on the readme-flow pairs
RUN_OVERHEAD_S = 1.0  # device set-up and close (gc, empty_cache) per run
NO_FIT_S = 5.0  # a pair that fails: part of one run
PAGEABLE_COPY_BYTES_PER_S = 5e9  # making the pageable host copies, each run
WEIGHTS_S = {"wan2.2": 60.0, "flux.1-dev": 30.0}  # building and pinning, once per model
SCHEDULE_S, STARTUP_S = 10.0, 10.0  # recording one request's schedule; imports, CUDA context


# ------------------------------------------------------------------------------ predict


def simulate_pair(shape: Shape, budget: str, plan: Plan, schedule: Schedule,
                  profile: HardwareProfile) -> dict[str, Any]:
    """The simulator's figures for one pair, and the GPU seconds its measurement will take."""
    from resbench.execution import SimBackend

    backend = SimBackend(get_model(shape.model), shape.request(), profile=profile,
                         schedule=schedule)
    host = host_bytes(plan, schedule)
    host_fits = host <= profile.host_ram_bytes - HOST_RESERVE_BYTES
    weights = sum(u.weight_bytes for u in schedule.units)
    copies_s = (host - weights) / PAGEABLE_COPY_BYTES_PER_S if host_fits else 0.0
    out: dict[str, Any] = {"model_weight_bytes": weights, "schedule": fingerprint(schedule),
                           "pred_host_bytes": host, "pred_fits_host": host_fits}
    try:
        r = backend.run(plan, budget_bytes(budget), trace=False)
    except DoesNotFitError as exc:
        return {**out, "pred_fits_device": False, "pred_fits": False,
                "pred_margin_bytes": -exc.missing_bytes, "pred_note": str(exc),
                "expected_gpu_s": NO_FIT_S + copies_s}
    run_s = (REAL_OVER_SIM * r.latency_s + r.peak_device_bytes / profile.h2d_pinned_bytes_per_s
             + copies_s + RUN_OVERHEAD_S)
    return {**out, "pred_fits_device": True, "pred_fits": host_fits,
            "pred_margin_bytes": r.capacity_bytes - r.peak_device_bytes,
            "pred_latency_s": r.latency_s, "pred_peak_device_bytes": r.peak_device_bytes,
            "pred_setup_s": r.setup_s, "pred_compute_s": r.compute_s, "pred_stall_s": r.stall_s,
            "pred_h2d_bytes": r.h2d_bytes, "pred_pinned_host_bytes": r.pinned_host_bytes,
            "pred_note": "" if host_fits else "host: pageable copies beside the pinned weights",
            "expected_gpu_s": 2 * run_s if host_fits else NO_FIT_S}


def all_pairs(work: Path, schedules: dict[Shape, Schedule],
              notes: list[str]) -> list[dict[str, Any]]:
    """Every pair's identity: presets, the readme flow's tuned plan, the tuned cells' plans
    (`notes` gets the tuned plans left out as equal to a listed one)."""
    from resbench.tune.objective import plan_id

    rows: list[dict[str, Any]] = [
        {"shape": s, "budget": b, "plan_tag": p, "plan_source": p, "how": "preset"}
        for s, p, b in PRESET_PAIRS]
    rows.append({"shape": LIGHT, "budget": "48GB", "plan_tag": "readme-tuned",
                 "plan_source": str(README_TUNED),
                 "how": "tuned in gpu_readme_flow (trial 32; measured there at 6.472 s)"})
    PLANS.mkdir(parents=True, exist_ok=True)
    for stale in PLANS.glob("*.toml"):
        stale.unlink()
    for shape, budget, n in TUNED_CELLS:
        listed = {plan_id(resolve_plan(r["plan_source"])): pair_id(shape, budget, r["plan_tag"])
                  for r in rows if (r["shape"], r["budget"]) == (shape, budget)}
        rows += tuned_plans(PLANS, shape, budget, n, schedules[shape], work, PROFILE,
                            listed=listed, notes=notes, engine=None)
    return rows


def predict(notes: list[str], log: Any = print) -> pd.DataFrame:
    """Every pair simulated on the calibrated profile, one row each (see the CSV's md)."""
    profile = load_profile(PROFILE)
    schedules = {s: load_schedule(s, engine="zoo") for s in dict.fromkeys([LIGHT, HEAVY, IMAGE])}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = all_pairs(Path(tmp), schedules, notes)
    out = []
    for p, pid, sim in simulated(pairs, schedules, profile, simulate_pair):
        out.append({**pair_row(p, pid), "earlier_real_s": EARLIER_REAL_S.get(pid), **sim})
        log(f"{pid}: fits {sim['pred_fits']} {sim.get('pred_latency_s')}")
    return in_run_order(pd.DataFrame(out), (IMAGE, LIGHT, HEAVY))


def expected_gpu_s(frame: pd.DataFrame) -> tuple[float, float]:
    """(seconds of pair runs, fixed seconds: start, weights per model, schedules per request)."""
    fixed = (STARTUP_S + sum(WEIGHTS_S[m] for m in frame.model.unique())
             + SCHEDULE_S * frame.request.nunique())
    return float(frame.expected_gpu_s.sum()), fixed


def predictions_md(frame: pd.DataFrame, command: str, notes: list[str]) -> str:
    import torch

    runs_s, fixed_s = expected_gpu_s(frame)
    counts = frame.groupby(["model", "request", "budget"], sort=False).size()
    lines = [
        "# H200 simulator predictions, out of sample (issue 14), committed before the GPU run",
        "",
        f"- command: `{command}`",
        f"- resbench commit: {git_head()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- profile: `{PROFILE}` (sha256 {hashlib.sha256(PROFILE.read_bytes()).hexdigest()}),"
        " from `resbench calibrate` alone: no constant fitted to a pipeline run",
        f"- torch {torch.__version__}; simulator `SimBackend(..., scale=1.0).run(plan, budget,"
        " trace=False)`; budget `full` = the whole card (None)",
        f"- tuned plans: `resbench.tune.tune` in the simulator on that profile, {TUNE_TRIALS} "
        f"trials, tpe, seed {TUNE_SEED}; per cell the best distinct plans not listed already "
        f"({', '.join(f'{s.slug} {b}: {n}' for s, b, n in TUNED_CELLS)}); saved in `{PLANS}/`",
        "- `pred_fits` = the simulator's device fit and the host check (every weight pinned "
        "once by the CUDA harness plus the plan's pageable copies <= the profile's host RAM "
        "less 4 GiB); the host check is arithmetic, not the simulator",
        "- margin: the simulator's capacity (the budget less its 3 % fragmentation share) less "
        "its peak; negative: the bytes missing at the first unit that did not fit",
        f"- {len(frame)} pairs, {int((~frame.pred_fits).sum())} predicted not to fit; "
        f"{int(frame.earlier_real_s.notna().sum())} were measured once before "
        "(`gpu_readme_flow.md`: known outcome, still out of sample for the profile)",
        f"- expected GPU time of `measure`: **{runs_s + fixed_s:.0f} s** = pair runs "
        f"{runs_s:.0f} s (2 x ({REAL_OVER_SIM} x predicted latency + resident bytes at pinned "
        f"H2D + {RUN_OVERHEAD_S:.0f} s), {NO_FIT_S:.0f} s a no-fit) + {fixed_s:.0f} s fixed "
        f"(start {STARTUP_S:.0f} s, weights {', '.join(f'{m} {s:.0f} s' for m, s in WEIGHTS_S.items())}, "
        f"{SCHEDULE_S:.0f} s a request's schedule)",
        "- measure on the H200: `PYTHONPATH=. OUT=$OUT python benchmarks/gpu_h200_oos.py "
        "measure` (rows in `$OUT/gpu_h200_oos_measured.csv`); then, here: `PYTHONPATH=. python "
        "benchmarks/gpu_h200_oos.py report --measured PATH/gpu_h200_oos_measured.csv`",
        "", "## Pairs by model, request and budget", "",
        "| model | request | budget | pairs |", "| --- | --- | --- | ---: |",
        *[f"| {m} | {r} | {b} | {n} |" for (m, r, b), n in counts.items()],
        "", "## Tuned plans", "",
        *[f"- {r.pair_id}: {r.plan_found}" for r in frame.itertuples()
          if r.plan_found != "preset"],
        *[f"- left out, equal to a listed plan: {n}" for n in notes],
        "", "## Predictions (out of sample)", "",
        "| pair | plan | fits | latency s | peak device GB | margin GB | expected GPU s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in frame.itertuples():
        lat = "" if pd.isna(r.pred_latency_s) else f"{r.pred_latency_s:.3f}"
        peak = "" if pd.isna(r.pred_peak_device_bytes) else f"{r.pred_peak_device_bytes / 1e9:.2f}"
        fits = "yes" if r.pred_fits else ("no (host)" if r.pred_fits_device else "no")
        lines.append(f"| {r.pair_id} | {r.plan} | {fits} | {lat} | {peak} | "
                     f"{r.pred_margin_bytes / 1e9:+.2f} | {r.expected_gpu_s:.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    sub.add_parser("predict", help="simulate the pairs; write the predictions CSV and md")
    m = sub.add_parser("measure", help="run the committed pairs on the device")
    m.add_argument("--predictions", default=str(ROOT / PREDICTIONS))
    m.add_argument("--out", default=None, help="folder for the measured CSV (default: $OUT)")
    m.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a dry run of the plumbing through CpuBackend on tiny requests")
    m.add_argument("--scale", type=float, default=1.0)
    m.add_argument("--pairs", default=None, help="comma-separated pair ids (default: all)")
    m.add_argument("--deadline-s", type=float, default=560.0,
                   help="skip (cuda) pairs whose expected seconds pass this")
    r = sub.add_parser("report", help="join predictions and measurements into the md")
    r.add_argument("--predictions", default=str(ROOT / PREDICTIONS))
    r.add_argument("--measured", default=str(ROOT / RESULTS / MEASURED_NAME))
    r.add_argument("--out", default=str(ROOT / RESULTS / "gpu_h200_oos.md"))
    args = ap.parse_args(argv)
    if args.mode == "predict":
        os.chdir(ROOT)
        notes: list[str] = []
        frame = predict(notes)
        frame.to_csv(PREDICTIONS, index=False)
        cmd = "PYTHONPATH=. python benchmarks/gpu_h200_oos.py predict"
        PREDICTIONS.with_suffix(".md").write_text(predictions_md(frame, cmd, notes))
        runs_s, fixed_s = expected_gpu_s(frame)
        print(f"{len(frame)} pairs -> {PREDICTIONS}; expected GPU time {runs_s + fixed_s:.0f} s")
    elif args.mode == "measure":
        out = args.out or os.environ.get("OUT")
        if not out:
            raise SystemExit("give --out DIR or set OUT")
        path = measure(Path(args.predictions), Path(out), profile=ROOT / PROFILE,
                       device=args.device, scale=args.scale, deadline_s=args.deadline_s,
                       pairs=args.pairs.split(",") if args.pairs else None)
        print(f"measured -> {path}")
    else:
        print(f"report -> {write_report(Path(args.predictions), Path(args.measured), Path(args.out))}")


if __name__ == "__main__":
    main()
