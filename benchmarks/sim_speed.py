"""Simulator speed: how many plans the tuner can score per minute on this machine's CPUs.

Records Wan2.2 T2V-A14B at 480x832x81, 40 steps (3,709 unit calls), draws random plans
(per component a random strategy and knobs, static or dynamic policy, random margin) and
scores each with `resbench.drivers.replay.simulate` against a budget on an H100 profile, in
a pool of worker processes as the tuner runs them. Plans that do not fit the budget count
too (the tuner meets them), but are reported apart: they stop at the first allocation that
fails.

Prints evaluations per minute and per-evaluation times (median and p90: all plans, by kind,
by outcome), then the single-process times of a few fixed plans, and writes a Markdown
report with the command, machine, versions and date (raw samples in a JSON beside it).

    python benchmarks/sim_speed.py                      # 240 plans, 2 workers, 48GB, h100-80g
    python benchmarks/sim_speed.py --plans 1000 --workers 4 --out /tmp/sim_speed.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from resbench.cost import CostModel
from resbench.drivers.replay import simulate
from resbench.errors import DoesNotFitError
from resbench.hardware import HardwareProfile, get_profile
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.record import record_schedule
from resbench.residency import HostOptions, LayerwiseConfig, OffloadConfig, Plan, ResidentConfig
from resbench.residency.strategies import StrategyConfig
from resbench.schedule import Schedule
from resbench.trace import Tracer
from resbench.units import format_bytes, parse_bytes

GiB = 2**30
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Sample:
    """One scored plan: its kind, whether it fit, and the seconds it took (wall and CPU)."""

    kind: str  # "layerwise" if any component streams blocks, else "whole"
    fits: bool
    wall_s: float
    cpu_s: float


# -- random plans ------------------------------------------------------------------------------
def random_config(rng: random.Random) -> StrategyConfig:
    strategy = rng.choices(["resident", "offload", "layerwise"], weights=[2, 3, 5])[0]
    if strategy == "resident":
        return ResidentConfig()
    if strategy == "offload":
        return OffloadConfig(prefetch=rng.random() < 0.8,
                             release=rng.choice(["drop", "drop", "drop", "d2h"]))
    return LayerwiseConfig(group_size=rng.choice([1, 1, 2, 4, 8]),
                           prefetch_depth=rng.choice([0, 1, 1, 2, 3]),
                           resident_blocks=rng.choice([0, 0, 2, 5, 10, 20]),
                           placement=rng.choice(["prefix", "spaced"]))


def random_plan(rng: random.Random, components: tuple[str, ...], i: int) -> Plan:
    return Plan(name=f"random-{i}", policy=rng.choice(["static", "dynamic"]),
                buffer_margin_bytes=rng.choice([0, 1, 2, 4]) * GiB,
                host=HostOptions(pinned=rng.random() < 0.9),
                components=tuple((c, random_config(rng)) for c in components))


def plan_kind(plan: Plan) -> str:
    return "layerwise" if any(isinstance(c, LayerwiseConfig) for _, c in plan.components) else "whole"


FIXED = {
    "offload (all)": Plan(components=(("default", OffloadConfig()),)),
    "layerwise DiTs g1 d1, offload rest": Plan(components=(
        ("dit", LayerwiseConfig(group_size=1, prefetch_depth=1)), ("default", OffloadConfig()))),
    "layerwise DiTs g1 d1, dynamic": Plan(policy="dynamic", components=(
        ("dit", LayerwiseConfig(group_size=1, prefetch_depth=1)), ("default", OffloadConfig()))),
    "layerwise DiTs g2 d1, offload rest": Plan(components=(
        ("dit", LayerwiseConfig(group_size=2, prefetch_depth=1)), ("default", OffloadConfig()))),
    "layerwise DiTs g4 d2 r10 spaced": Plan(components=(
        ("dit", LayerwiseConfig(group_size=4, prefetch_depth=2, resident_blocks=10,
                                placement="spaced")), ("default", OffloadConfig()))),
    "layerwise all g1 d1, dynamic": Plan(policy="dynamic", components=(
        ("default", LayerwiseConfig(group_size=1, prefetch_depth=1)),)),
}


# -- workers ----------------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init(schedule: Schedule, profile: HardwareProfile, capacity_bytes: int) -> None:
    _STATE.update(schedule=schedule, profile=profile, capacity=capacity_bytes,
                  times=CostModel(profile).call_times(schedule.calls))


def score(plan: Plan) -> Sample:
    s = _STATE
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        simulate(s["schedule"], plan, s["profile"], capacity_bytes=s["capacity"],
                 tracer=Tracer(enabled=False), call_times_s=s["times"])
        fits = True
    except DoesNotFitError:
        fits = False
    return Sample(plan_kind(plan), fits, time.perf_counter() - wall, time.process_time() - cpu)


# -- report -----------------------------------------------------------------------------------
def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
    return f"{statistics.median(values) * 1e3:.1f} / {p90 * 1e3:.1f}"


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": str(os.cpu_count()), "cpu_model": model or platform.processor(),
            "platform": platform.platform()}


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "resbench"], cwd=ROOT, text=True, capture_output=True).stdout
        return sha + (" (resbench/ modified)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", type=int, default=240, help="random plans to score")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", default="48GB", help="device memory budget of each plan")
    ap.add_argument("--hardware", default="h100-80g")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=7, help="runs of each fixed plan (1 process)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sim_speed.md")
    args = ap.parse_args()
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])

    spec = get_model("wan2.2")
    request = Request.for_model(spec, height=480, width=832, frames=81, steps=40)
    t0 = time.perf_counter()
    schedule = record_schedule(spec, request)
    record_s = time.perf_counter() - t0
    profile = get_profile(args.hardware)
    capacity = parse_bytes(args.budget, what="--budget")
    n_calls = len(schedule.calls)
    print(f"schedule: {spec.name} 480x832x81, 40 steps: {n_calls} unit calls "
          f"(recorded in {record_s:.1f} s); budget {format_bytes(capacity)} on {profile.name}")

    rng = random.Random(args.seed)
    plans = [random_plan(rng, schedule.components, i) for i in range(args.plans)]
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    with ctx.Pool(args.workers, initializer=_init, initargs=(schedule, profile, capacity)) as pool:
        # warm-up (excluded): each worker's first plan builds the schedule's lookahead tables
        pool.map(score, plans[: 2 * args.workers], chunksize=1)
        t0 = time.perf_counter()
        samples = pool.map(score, plans, chunksize=1)
        wall_s = time.perf_counter() - t0
    per_min = len(samples) / wall_s * 60

    _init(schedule, profile, capacity)
    fixed: dict[str, list[float]] = {}
    for name, plan in FIXED.items():
        score(plan)  # warm-up
        fixed[name] = [score(plan).cpu_s for _ in range(args.repeats)]

    groups = [
        ("all plans", lambda s: True),
        ("layerwise (any component)", lambda s: s.kind == "layerwise"),
        ("layerwise, fits the budget", lambda s: s.kind == "layerwise" and s.fits),
        ("resident/offload only", lambda s: s.kind == "whole"),
        ("fits the budget", lambda s: s.fits),
        ("does not fit (stops early)", lambda s: not s.fits),
    ]
    cpu_rate = args.workers * 60 / statistics.mean(s.cpu_s for s in samples)
    fits = [s.cpu_s for s in samples if s.fits]
    fit_rate = args.workers * 60 / statistics.mean(fits) if fits else 0.0
    lines = [
        f"{len(samples)} plans, {args.workers} workers: {wall_s:.2f} s → "
        f"**{per_min:,.0f} evaluations/minute** (wall clock)",
        "",
        f"CPU-bound rate, what {args.workers} otherwise idle cores would give: "
        f"{cpu_rate:,.0f}/minute ({args.workers} × 60 s / mean CPU time per evaluation); "
        f"{fit_rate:,.0f}/minute counting only plans that fit",
        "",
        "| plans | n | wall ms, median / p90 | CPU ms, median / p90 |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {label} | {len(chosen)} | {_ms([s.wall_s for s in chosen])} | "
          f"{_ms([s.cpu_s for s in chosen])} |"
          for label, pick in groups for chosen in [[s for s in samples if pick(s)]]],
        "",
        f"Fixed plans, one process, {args.repeats} runs each (CPU ms, median / min; yardstick: "
        f"simulated unit calls per second at the median):",
        "",
        "| plan | ms median / min | unit calls/s |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {statistics.median(v) * 1e3:.1f} / {min(v) * 1e3:.1f} | "
          f"{n_calls / statistics.median(v):,.0f} |" for name, v in fixed.items()],
    ]
    print("\n".join(lines))

    m = machine()
    report = [
        "# Simulator speed",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {m['cpus']} CPUs, {m['cpu_model']} ({m['platform']})",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, "
        f"resbench {git_sha()}",
        f"- workload: {spec.name} 480x832x81, 40 steps, {n_calls} unit calls; "
        f"{args.plans} random plans (seed {args.seed}), budget {args.budget} on "
        f"{profile.name}; tracer off",
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"(other processes on the machine slow the numbers down)",
        "",
        *lines,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report))
    raw = {"command": command, "wall_s": wall_s, "fixed_cpu_s": fixed,
           "samples": [[s.kind, s.fits, s.wall_s, s.cpu_s] for s in samples]}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(f"wrote {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
