"""Issue 14's out-of-sample rounds on the diffusers engine: one module, each round a `Round`
(its requests, preset pairs and tuned cells; `benchmarks/gpu_oos3.py`, `gpu_oos4.py`, ...).

A round's pairs are new (plan, request, budget) triples, simulated on a calibrated profile and
committed before the card measures them. Three modes, each round's script calling `main`:

* ``predict`` (CPU, here): simulate every pair on the profile given (presets, and the best
  plans of `tune` studies run in the simulator on it); write
  ``benchmarks/results/gpu_oosN_predictions.{csv,md}`` and the tuned plans. Committed before
  the GPU run.
* ``measure`` (one H200): the committed pairs on the card (`benchmarks/oos_measure.py`).
* ``report`` (CPU): ``benchmarks/results/gpu_oosN.md`` (`benchmarks/oos_report.py`).

    PYTHONPATH=. python benchmarks/gpu_oosN.py predict --profile PROFILE.toml
    PYTHONPATH=. python benchmarks/gpu_oosN.py measure --out $OUT/oosN      # on the H200
    PYTHONPATH=. python benchmarks/gpu_oosN.py report --measured DIR/gpu_oosN_measured.csv
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks.provenance import git_head  # noqa: E402, F401 (re-exported for the round scripts)
from resbench.errors import DoesNotFitError  # noqa: E402
from resbench.hardware import HardwareProfile, load_profile  # noqa: E402
from resbench.models import get_model  # noqa: E402
from resbench.pipeline import Request  # noqa: E402
from resbench.residency.plan import Plan, plan_from_dict  # noqa: E402
from resbench.resources import resolve_plan  # noqa: E402
from resbench.schedule import Schedule  # noqa: E402
from resbench.units import parse_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("benchmarks/results")
ENGINE = "diffusers"
HOST_RESERVE_BYTES = 4 * 2**30


@dataclass(frozen=True, slots=True)
class Shape:
    """One request: a model at a size, steps and CFG."""

    model: str
    height: int
    width: int
    frames: int
    steps: int
    cfg: bool

    @property
    def slug(self) -> str:
        return f"{self.model}-{self.height}x{self.width}x{self.frames}s{self.steps}"

    def request(self) -> Request:
        return Request.for_model(get_model(self.model), height=self.height, width=self.width,
                                 frames=self.frames, steps=self.steps, cfg=self.cfg)


FULL = "full"  # the budget label of the whole card (budget None)


@dataclass(frozen=True)
class Round:
    """One out-of-sample round: its number names its files (`gpu_oos{n}_*`)."""

    number: int
    shapes: tuple[Shape, ...]
    preset_pairs: tuple[tuple[Shape, str, str], ...]
    """(shape, preset, budget label). Plans the simulator expects not to fit are welcome."""
    tuned_cells: tuple[tuple[Shape, str, int], ...]
    """(shape, budget label, plans): tuned in the simulator on the profile; the study's best
    `plans` distinct plans not already listed at that budget join the pairs."""
    title: str
    deadline_s: float = 262.0
    """`measure` skips (cuda) pairs whose expected seconds would pass this."""
    host_limit_bytes: int | None = None
    """Host bytes (pinned weights plus pageable copies) a pair may need on the measuring
    machine; pairs above are left out of the round (None: the profile's host RAM)."""
    earlier: tuple[str, ...] = ()
    """Earlier rounds' prediction CSVs (under benchmarks/results): no pair may repeat."""

    @property
    def predictions(self) -> Path:
        return RESULTS / f"gpu_oos{self.number}_predictions.csv"

    @property
    def plans_dir(self) -> Path:
        return RESULTS / f"gpu_oos{self.number}_plans"

    @property
    def derived_profile(self) -> Path:
        return RESULTS / f"gpu_oos{self.number}_profile.toml"

    @property
    def script(self) -> str:
        return f"benchmarks/gpu_oos{self.number}.py"

    @property
    def measured_name(self) -> str:
        return f"gpu_oos{self.number}_measured.csv"

    @property
    def report(self) -> Path:
        return RESULTS / f"gpu_oos{self.number}.md"

    def pair_ids(self) -> list[str]:
        return [pair_id(s, b, p) for s, p, b in self.preset_pairs]


TUNE_TRIALS, TUNE_SEED = 100, 0

# GPU-time estimate of `measure` (one timed run per pair; one untimed warm-up per model:
# the requests of a model share their kernels, and the VAE decodes one latent frame at a time).
REAL_OVER_SIM = 1.15
RUN_OVERHEAD_S = 1.0  # device set-up and close (gc, empty_cache) per run
NO_FIT_S = 3.0  # a pair that fails early; a decode-time OOM costs its whole run
WEIGHTS_S = {"wan2.2": 50.0, "flux.1-dev": 28.0}  # building and pinning, once per model
SCHEDULE_S, STARTUP_S = 6.0, 10.0  # recording one request's schedule; imports, CUDA context


def budget_bytes(label: str) -> int | None:
    return None if label == FULL else parse_bytes(label)


def pair_id(shape: Shape, budget: str, plan_tag: str) -> str:
    return f"{shape.slug}-{budget}-{plan_tag}"


def load_schedule(shape: Shape, engine: str = ENGINE) -> Schedule:
    """`shape`'s recording by `engine` (round 2's pairs: `zoo`), cached under runs/schedules/."""
    from benchmarks.gpu_common import load_schedule as cached

    return cached(get_model(shape.model), shape.request(), scale=1.0, device="cuda",
                  engine=engine)


def host_bytes(plan: Plan, schedule: Schedule) -> int:
    """Host bytes the CUDA harness needs: every weight pinned once plus pageable copies of
    the units the plan streams unpinned."""
    from resbench.residency.pinning import pinned_units
    from resbench.residency.strategies import STRATEGIES

    kinds = schedule.kinds
    pinned = {(u.component, u.name) for u in pinned_units(plan, schedule)}
    pageable = sum(u.weight_bytes for u in schedule.units
                   if not STRATEGIES[plan.applied_config(u.component, kinds.get(u.component, ""))
                                     .name].resident and (u.component, u.name) not in pinned)
    return sum(u.weight_bytes for u in schedule.units) + pageable


def simulate_pair(shape: Shape, budget: str, plan: Plan, schedule: Schedule,
                  profile: HardwareProfile) -> dict[str, Any]:
    """The simulator's figures for one pair, and the GPU seconds its measurement will take."""
    from benchmarks.oos_measure import fingerprint
    from resbench.execution import SimBackend

    backend = SimBackend(get_model(shape.model), shape.request(), profile=profile,
                         schedule=schedule, engine=ENGINE)
    host = host_bytes(plan, schedule)
    host_fits = host <= profile.host_ram_bytes - HOST_RESERVE_BYTES
    out: dict[str, Any] = {"model_weight_bytes": sum(u.weight_bytes for u in schedule.units),
                           "schedule": fingerprint(schedule), "pred_host_bytes": host,
                           "pred_fits_host": host_fits}
    try:
        r = backend.run(plan, budget_bytes(budget), trace=False)
    except DoesNotFitError as exc:
        return {**out, "pred_fits_device": False, "pred_fits": False,
                "pred_margin_bytes": -exc.missing_bytes, "pred_note": str(exc),
                "expected_gpu_s": NO_FIT_S}
    run_s = (REAL_OVER_SIM * r.latency_s + r.peak_device_bytes / profile.h2d_pinned_bytes_per_s
             + RUN_OVERHEAD_S)
    # with the caching allocator modelled, fit is decided on reserved bytes: the margin too
    held = r.peak_reserved_bytes if r.peak_reserved_bytes is not None else r.peak_device_bytes
    return {**out, "pred_fits_device": True, "pred_fits": host_fits,
            "pred_margin_bytes": r.capacity_bytes - held,
            "pred_latency_s": r.latency_s, "pred_peak_device_bytes": r.peak_device_bytes,
            "pred_peak_reserved_bytes": r.peak_reserved_bytes,
            "pred_setup_s": r.setup_s, "pred_compute_s": r.compute_s, "pred_stall_s": r.stall_s,
            "pred_h2d_bytes": r.h2d_bytes, "pred_pinned_host_bytes": r.pinned_host_bytes,
            "pred_note": "" if host_fits else "host: pageable copies beside the pinned weights",
            "expected_gpu_s": run_s if host_fits else NO_FIT_S}


def tuned_plans(plans_dir: Path, shape: Shape, budget: str, n: int, schedule: Schedule,
                work: Path, profile_path: Path, *, listed: dict[str, str], notes: list[str],
                engine: str | None = ENGINE) -> list[dict[str, Any]]:
    """Tune one cell in the simulator on the profile and save the study's best `n` distinct
    plans that `listed` (plan id -> pair id, at this budget) does not hold yet, in
    `plans_dir`. A plan's tag is its rank among the study's distinct feasible plans.
    `engine`: the tuner's (None: its default, as round 2 ran it)."""
    import optuna

    from resbench.tune import TuneOptions, tune
    from resbench.tune.study import open_storage

    storage = work / f"{shape.slug}-{budget}.log"
    res = tune(TuneOptions(budget_bytes=parse_bytes(budget), model=shape.model,
                           request={"height": shape.height, "width": shape.width,
                                    "frames": shape.frames, "steps": shape.steps,
                                    "cfg": shape.cfg},
                           hardware=str(profile_path), engine=engine, n_trials=TUNE_TRIALS,
                           seed=TUNE_SEED, storage=str(storage)), schedule=schedule)
    study = optuna.load_study(study_name=res.study_name, storage=open_storage(str(storage)))
    feasible = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                if t.constraints and all(v <= 0 for v in t.constraints.values())]
    out: list[dict[str, Any]] = []
    seen: list[str] = []
    for t in sorted(feasible, key=lambda t: (t.values[0], t.number)):
        pid = t.user_attrs["plan_id"]
        if pid in seen:
            continue
        seen.append(pid)
        tag = f"tuned{len(seen)}"
        how = (f"rank {len(seen)}: trial {t.number} of {res.trials_total} ({TUNE_TRIALS} trials, "
               f"tpe, seed {TUNE_SEED}) of study {res.study_name}, simulated {t.values[0]:.3f} s")
        if pid in listed:
            notes.append(f"{shape.slug} {budget} {tag} ({how}) is pair {listed[pid]}")
            continue
        plan = plan_from_dict(tomllib.loads(t.user_attrs["plan_toml"]), source=how)
        plan = replace(plan, name=f"{shape.slug}/{budget}/{tag}", description=how)
        path = plans_dir / f"{shape.slug}-{budget}-{tag}.toml"
        path.write_text(f"# Found by resbench tune in the simulator on {profile_path.name}.\n"
                        + plan.to_toml())
        out.append({"shape": shape, "budget": budget, "plan_tag": tag, "plan_source": str(path),
                    "how": how})
        if len(out) == n:
            break
    return out


def all_pairs(rnd: Round, work: Path, schedules: dict[Shape, Schedule], profile_path: Path,
              notes: list[str]) -> list[dict[str, Any]]:
    from resbench.tune.objective import plan_id

    rows: list[dict[str, Any]] = [
        {"shape": s, "budget": b, "plan_tag": p, "plan_source": p, "how": "preset"}
        for s, p, b in rnd.preset_pairs]
    rnd.plans_dir.mkdir(parents=True, exist_ok=True)
    for stale in rnd.plans_dir.glob("*.toml"):
        stale.unlink()
    for shape, budget, n in rnd.tuned_cells:
        listed = {plan_id(resolve_plan(r["plan_source"])): pair_id(shape, budget, r["plan_tag"])
                  for r in rows if (r["shape"], r["budget"]) == (shape, budget)}
        rows += tuned_plans(rnd.plans_dir, shape, budget, n, schedules[shape], work, profile_path,
                            listed=listed, notes=notes)
    return rows


def predict(rnd: Round, profile_path: Path, notes: list[str], log: Any = print) -> pd.DataFrame:
    """Every pair simulated on the profile, one row each, in the order `measure` runs them;
    pairs needing more host memory than the round allows are left out (named in `notes`)."""
    profile = load_profile(profile_path)
    schedules = {s: load_schedule(s) for s in rnd.shapes}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = all_pairs(rnd, Path(tmp), schedules, profile_path, notes)
    out = []
    for p, pid, sim in simulated(pairs, schedules, profile):
        if rnd.host_limit_bytes is not None and sim["pred_host_bytes"] > rnd.host_limit_bytes:
            notes.append(f"{pid} left out: it needs {sim['pred_host_bytes'] / 1e9:.1f} GB of host "
                         f"memory, above the round's {rnd.host_limit_bytes / 1e9:.0f} GB")
            continue
        out.append({**pair_row(p, pid), **sim})
        log(f"{pid}: fits {sim['pred_fits']} {sim.get('pred_latency_s')}")
    return in_run_order(pd.DataFrame(out), rnd.shapes)


def simulated(pairs: list[dict[str, Any]], schedules: dict[Shape, Schedule],
              profile: HardwareProfile, simulate: Callable[..., dict[str, Any]] | None = None
              ) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """(pair, pair id, `simulate(shape, budget, plan, schedule, profile)`'s figures) for every
    pair of `all_pairs` (`simulate`: `simulate_pair` unless given, e.g. round 2's)."""
    simulate = simulate or simulate_pair
    for p in pairs:
        shape: Shape = p["shape"]
        p["plan"] = resolve_plan(p["plan_source"])
        yield p, pair_id(shape, p["budget"], p["plan_tag"]), simulate(
            shape, p["budget"], p["plan"], schedules[shape], profile)


def pair_row(p: dict[str, Any], pid: str) -> dict[str, Any]:
    """A predictions row's identity: the pair's request, budget and plan."""
    shape: Shape = p["shape"]
    return {"pair_id": pid, "model": shape.model, "height": shape.height, "width": shape.width,
            "frames": shape.frames, "steps": shape.steps, "cfg": shape.cfg,
            "request": shape.slug, "budget": p["budget"], "budget_bytes": budget_bytes(p["budget"]),
            "plan": p["plan"].name, "plan_source": p["plan_source"], "plan_found": p["how"]}


def in_run_order(frame: pd.DataFrame, shapes: tuple[Shape, ...]) -> pd.DataFrame:
    """The predictions in the order `measure` runs them: models grouped, cheap FLUX first
    (`shapes`' order); within a request the pairs expected to fit first (the model's first of
    them warms it up), so a deadline cuts no-fit pairs. Byte columns as nullable integers."""
    for col in ("budget_bytes", "pred_margin_bytes", "pred_peak_device_bytes",
                "pred_peak_reserved_bytes", "pred_h2d_bytes", "pred_pinned_host_bytes"):
        if col in frame:
            frame[col] = frame[col].astype("Int64")
    frame["_shape"] = frame.request.map([s.slug for s in shapes].index)
    frame["_no_fit"] = ~frame.pred_fits
    return frame.sort_values(["_shape", "_no_fit"], kind="stable", ignore_index=True).drop(
        columns=["_shape", "_no_fit"])


def warmup_s(frame: pd.DataFrame) -> float:
    """One untimed run per model: its first pair expected to fit."""
    first = frame[frame.pred_fits].groupby("model", sort=False).head(1)
    return float(first.expected_gpu_s.sum())


def expected_gpu_s(frame: pd.DataFrame) -> tuple[float, float]:
    """(seconds of pair runs, fixed seconds: start, weights, schedules, warm-ups)."""
    fixed = (STARTUP_S + sum(WEIGHTS_S[m] for m in frame.model.unique())
             + SCHEDULE_S * frame.request.nunique() + warmup_s(frame))
    return float(frame.expected_gpu_s.sum()), fixed


def predictions_md(rnd: Round, frame: pd.DataFrame, command: str, profile_path: Path,
                   notes: list[str], derived_note: str = "") -> str:
    import torch

    runs_s, fixed_s = expected_gpu_s(frame)
    counts = frame.groupby(["model", "request", "budget"], sort=False).size()
    profile = load_profile(profile_path)
    lines = [
        f"# Simulator predictions, {rnd.title} (issue 14), committed before the GPU run",
        "",
        f"- command: `{command}`",
        f"- resbench commit: {git_head()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- profile: `{profile_path}` (sha256 "
        f"{hashlib.sha256(profile_path.read_bytes()).hexdigest()}): {profile.description}; "
        "from `resbench calibrate` alone (microbenchmarks, several at the pipelines' own "
        "shapes): no constant fitted to a pipeline run"
        + (f". {derived_note}" if derived_note else ""),
        f"- engine: `{ENGINE}` (the pipelines as diffusers runs them); torch "
        f"{torch.__version__} here; simulator `SimBackend(..., engine='diffusers').run(plan, "
        "budget, trace=False)`; budget `full` = the whole card (None)",
        f"- tuned plans: `resbench.tune.tune` in the simulator on that profile, {TUNE_TRIALS} "
        f"trials, tpe, seed {TUNE_SEED}; per cell the best distinct plans not listed already "
        f"({', '.join(f'{s.slug} {b}: {n}' for s, b, n in rnd.tuned_cells)}); saved in "
        f"`{rnd.plans_dir}/`",
        "- `pred_fits` = the simulator's device fit and the host check (every weight pinned "
        "once by the CUDA harness plus the plan's pageable copies <= the profile's host RAM "
        "less 4 GiB)",
        "- margin: the simulator's capacity less its peak (with the caching allocator modelled: "
        "the budget less the peak reserved bytes; without: the budget less its fragmentation "
        "share, less the peak); negative: the bytes missing at the first allocation that did "
        "not fit",
        f"- {len(frame)} pairs, {int((~frame.pred_fits).sum())} predicted not to fit; none was "
        "in an earlier round",
        f"- expected GPU time of `measure`: **{runs_s + fixed_s:.0f} s** = pair runs "
        f"{runs_s:.0f} s ({REAL_OVER_SIM} x predicted latency + resident bytes at pinned H2D + "
        f"{RUN_OVERHEAD_S:.0f} s, {NO_FIT_S:.0f} s a no-fit) + {fixed_s:.0f} s fixed (start, "
        "weights per model, a request's schedule, one warm-up run per model)",
        f"- measure on one H200: `PYTHONPATH=. python {rnd.script} measure --out "
        f"$OUT/oos{rnd.number}`; then, here: `PYTHONPATH=. python {rnd.script} report "
        f"--measured PATH/{rnd.measured_name}`",
        "", "## Pairs by model, request and budget", "",
        "| model | request | budget | pairs |", "| --- | --- | --- | ---: |",
        *[f"| {m} | {r} | {b} | {n} |" for (m, r, b), n in counts.items()],
        "", "## Tuned plans", "",
        *[f"- {r.pair_id}: {r.plan_found}" for r in frame.itertuples()
          if r.plan_found != "preset"],
        *[f"- left out, equal to a listed plan: {n}" for n in notes],
        "", "## Predictions (out of sample)", "",
        "| pair | plan | fits | latency s | peak device GB allocated / reserved | margin GB | "
        "expected GPU s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in frame.itertuples():
        lat = "" if pd.isna(r.pred_latency_s) else f"{r.pred_latency_s:.3f}"
        peak = "" if pd.isna(r.pred_peak_device_bytes) else f"{r.pred_peak_device_bytes / 1e9:.2f}"
        res = getattr(r, "pred_peak_reserved_bytes", None)
        peak += "" if res is None or pd.isna(res) else f" / {res / 1e9:.2f}"
        fits = "yes" if r.pred_fits else ("no (host)" if r.pred_fits_device else "no")
        lines.append(f"| {r.pair_id} | {r.plan} | {fits} | {lat} | {peak} | "
                     f"{r.pred_margin_bytes / 1e9:+.2f} | {r.expected_gpu_s:.0f} |")
    return "\n".join(lines) + "\n"


def main(rnd: Round, argv: list[str] | None = None, doc: str | None = None) -> None:
    ap = argparse.ArgumentParser(description=doc or __doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("predict", help="simulate the pairs; write the predictions CSV and md")
    p.add_argument("--profile", required=True, help="the calibrated profile TOML")
    p.add_argument("--workspaces-from", default=None,
                   help="the profile's samples JSON: derive the per-precision workspace fields "
                        "from it (a profile calibrated before they were split by precision); "
                        f"the profile used is written to {rnd.derived_profile}")
    m = sub.add_parser("measure", help="run the committed pairs on the device")
    m.add_argument("--predictions", default=str(ROOT / rnd.predictions))
    m.add_argument("--out", default=None, help="folder for the measured CSV (default: $OUT)")
    m.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a dry run of the plumbing through CpuBackend on tiny requests")
    m.add_argument("--scale", type=float, default=1.0)
    m.add_argument("--pairs", default=None, help="comma-separated pair ids (default: all)")
    m.add_argument("--deadline-s", type=float, default=rnd.deadline_s,
                   help="skip (cuda) pairs whose expected seconds would pass this")
    r = sub.add_parser("report", help="join predictions and measurements into the md")
    r.add_argument("--predictions", default=str(ROOT / rnd.predictions))
    r.add_argument("--measured", required=True)
    r.add_argument("--out", default=str(ROOT / rnd.report))
    args = ap.parse_args(argv)
    if args.mode == "predict":
        profile_path = Path(args.profile)
        os.chdir(ROOT)
        notes: list[str] = []
        derived_note = ""
        if args.workspaces_from:
            from resbench.calibrate_shapes import with_workspace_fields
            from resbench.hardware import save_profile

            derived = with_workspace_fields(load_profile(profile_path), args.workspaces_from)
            derived_path = rnd.derived_profile
            save_profile(derived, derived_path)
            derived_note = (
                f"`{derived_path}` is `{profile_path}` (sha256 "
                f"{hashlib.sha256(profile_path.read_bytes()).hexdigest()}) with its workspace "
                f"fields re-derived per precision from `{args.workspaces_from}`'s "
                "`workspace_bytes` (`resbench.calibrate_shapes.workspace_fields`: the rule "
                "`resbench calibrate` applies to the same measurements since 73e8f35; the run "
                "that made the profile was at 80f7b5a, which took the largest of both "
                "precisions); every other field as calibrated")
            profile_path = derived_path
        frame = predict(rnd, profile_path, notes)
        frame.to_csv(rnd.predictions, index=False)
        cmd = (f"PYTHONPATH=. python {rnd.script} predict --profile {args.profile}"
               + (f" --workspaces-from {args.workspaces_from}" if args.workspaces_from else ""))
        rnd.predictions.with_suffix(".md").write_text(
            predictions_md(rnd, frame, cmd, profile_path, notes, derived_note))
        runs_s, fixed_s = expected_gpu_s(frame)
        print(f"{len(frame)} pairs -> {rnd.predictions}; expected GPU time "
              f"{runs_s + fixed_s:.0f} s")
    elif args.mode == "measure":
        from benchmarks.oos_measure import measure

        out = args.out or os.environ.get("OUT")
        if not out:
            raise SystemExit("give --out DIR or set OUT")
        path = measure(Path(args.predictions), Path(out), device=args.device, scale=args.scale,
                       deadline_s=args.deadline_s, measured_name=rnd.measured_name,
                       host_limit_bytes=rnd.host_limit_bytes,
                       pairs=args.pairs.split(",") if args.pairs else None)
        print(f"measured -> {path}", flush=True)
    else:
        from benchmarks.oos_report import write_report

        print(f"report -> {write_report(rnd, Path(args.predictions), Path(args.measured), Path(args.out))}")
