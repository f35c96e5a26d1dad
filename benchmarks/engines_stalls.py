"""Where a tuned plan's time above compute goes: its stalls by stage and component, and the
bytes it copies in by stage — simulated (the calibrated H200 profile) and, given a run's
profiles.tar.gz, as measured in the traced call `benchmarks/engines.py` makes of each tuned row.

    PYTHONPATH=. python benchmarks/engines_stalls.py flux-1024-s8 24 [--run OUTDIR]

Prints one table (a DataFrame): per `stage/component`, stall seconds (compute waiting on an
async copy), pageable-copy seconds (blocking copies on the compute stream) and H2D GB,
simulated and measured side by side, then the totals.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PLANS = Path(__file__).parent / "results" / "engines_plans"
PROFILE = Path(__file__).parent / "results" / "gpu_oos4_profile.toml"
"""The H200 calibration with the caching-allocator model, which run 3's plans were tuned on."""
CELLS = {  # cell → (model, request)
    "flux-1024-s8": ("flux.1-dev", {"height": 1024, "width": 1024, "steps": 8, "cfg": False}),
    "wan-480x832x17-s4": ("wan2.2-t2v-a14b", {"height": 480, "width": 832, "frames": 17,
                                              "steps": 4, "cfg": True}),
    "wan-480x832x81-s4": ("wan2.2-t2v-a14b", {"height": 480, "width": 832, "frames": 81,
                                              "steps": 4, "cfg": True}),
}


def by_stage(frame: pd.DataFrame) -> pd.DataFrame:
    """Stall seconds and H2D GB per `stage/component` of one request's trace."""
    waits = frame[frame["kind"] == "wait"]
    loads = frame[frame["kind"] == "load"]
    stall = waits.groupby(["stage", "component"])["stall_s"].sum()
    h2d = loads.groupby(["stage", "component"])["bytes"].sum() / 1e9
    blocking = loads[loads["stream"] == "compute"]
    pageable = (blocking["end_s"] - blocking["t_s"]).groupby(
        [blocking["stage"], blocking["component"]]).sum()
    out = pd.concat({"stall_s": stall, "pageable_copy_s": pageable, "h2d_gb": h2d},
                    axis=1).fillna(0.0)
    out.index = [f"{s}/{c}" for s, c in out.index]
    return out


def totals(frame: pd.DataFrame) -> dict[str, float]:
    start = frame.loc[frame["kind"] == "request_start", "t_s"].min()
    end = frame.loc[frame["kind"] == "request_end", "t_s"].max()
    compute = frame[frame["kind"] == "compute"]
    return {"latency_s": float(end - start),
            "compute_s": float((compute["end_s"] - compute["t_s"]).sum()),
            "stall_s": float(frame.loc[frame["kind"] == "wait", "stall_s"].sum()),
            "pageable_copy_s": float(sum(
                r.end_s - r.t_s for r in frame[(frame["kind"] == "load")
                                               & (frame["stream"] == "compute")].itertuples())),
            "h2d_gb": float(frame.loc[frame["kind"] == "load", "bytes"].sum() / 1e9)}


def simulated(cell: str, budget_gb: float, plan_path: Path,
              hardware: Path = PROFILE) -> pd.DataFrame:
    from resbench.analysis.bounds import last_request
    from resbench.drivers.replay import simulate
    from resbench.engines.base import make_engine
    from resbench.models.registry import get_model
    from resbench.pipeline import Request
    from resbench.profile import resolve_hardware
    from resbench.residency.plan import load_plan
    from resbench.trace import Tracer

    model, request = CELLS[cell]
    spec = get_model(model)
    schedule = make_engine("diffusers", spec).record(Request.for_model(spec, **request))
    run = simulate(schedule, load_plan(plan_path), resolve_hardware(str(hardware)),
                   capacity_bytes=int(budget_gb * 1e9), tracer=Tracer())
    assert run.trace is not None
    # a plan that keeps blocks between requests is simulated twice back to back: the second
    # request is the one its latency is, and the one the card's warm traced call matches
    return last_request(run.trace)


def measured(run: Path, name: str) -> pd.DataFrame | None:
    tar_path = run / "profiles.tar.gz"
    if not tar_path.is_file():
        return None
    with tarfile.open(tar_path) as tar:
        try:
            member = tar.extractfile(f"traces/{name}.csv.gz")
        except KeyError:
            return None
        assert member is not None
        return pd.read_csv(io.BytesIO(gzip.decompress(member.read())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell", choices=sorted(CELLS))
    ap.add_argument("budget_gb", type=float)
    ap.add_argument("--plan", type=Path, default=None,
                    help="plan TOML [default: engines_plans/<cell>-<budget>GB.toml]")
    ap.add_argument("--run", type=Path, default=None, help="a run folder of engines.py")
    ap.add_argument("--row", default="resbench-tuned")
    ap.add_argument("--hardware", type=Path, default=PROFILE)
    args = ap.parse_args(argv)
    plan = args.plan or PLANS / f"{args.cell}-{args.budget_gb:g}GB.toml"
    sim = simulated(args.cell, args.budget_gb, plan, args.hardware)
    tables: dict[str, Any] = {"sim": by_stage(sim)}
    sums = {"sim": totals(sim)}
    if args.run is not None:
        real = measured(args.run, f"{args.cell}_{args.budget_gb:.1f}GB_{args.row}")
        if real is None:
            print(f"{args.run}: no trace of {args.row} at {args.budget_gb:g} GB", file=sys.stderr)
        else:
            tables["measured"] = by_stage(real)
            sums["measured"] = totals(real)
    table = pd.concat(tables, axis=1).fillna(0.0)
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(f"{plan.name} at {args.budget_gb:g} GB")
        print(table.sort_values((("sim", "stall_s")), ascending=False))
        print(pd.DataFrame(sums).T)
    return 0


if __name__ == "__main__":
    sys.exit(main())
