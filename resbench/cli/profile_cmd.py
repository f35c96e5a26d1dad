"""`resbench profile`: run a request under a plan (simulator by default without a GPU)."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from resbench.analysis import stage_breakdown
from resbench.analysis.bounds import last_request
from resbench.cli import preflight
from resbench.cli.common import (
    SIZE,
    emit,
    engine_option,
    force_option,
    json_option,
    model_option,
    request_options,
    request_overrides,
    stderr,
)
from resbench.fileio import atomic_path
from resbench.models.registry import get_model
from resbench.profile import ProfileResult, run_profile
from resbench.report.build import write_report
from resbench.report.chrome_trace import run_to_chrome_trace, write_chrome_trace
from resbench.resources import resolve_plan
from resbench.run import check_run_dir, load_run, save_run
from resbench.units import describe_bytes, format_bytes


@click.command("profile")
@model_option
@engine_option
@click.option("--plan", default=None, help="Plan TOML file or preset name (default: sglang-wan2.2).")
@click.option("--budget", type=SIZE, default=None, help="Device memory budget, e.g. 48GB or 44.7GiB.")
@click.option("--device", type=click.Choice(["auto", "sim", "cuda", "cpu"]), default="auto",
              help="auto: the GPU if there is one, else the simulator.")
@click.option("--hardware", default=None, help="Hardware preset or profile TOML (default: detect, else h100-80g).")
@click.option("--scale", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0,
              help="Shrink the model (tests, --device cpu).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder: events, plan, schedule, Chrome trace (default runs/<model>-<device>-<plan>).")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="HTML report path (default reports/<run folder name>.html).")
@click.option("--steady-state", is_flag=True, default=None,
              help="Report the second of two back-to-back requests on one setup (a server's "
                   "warm call) for any plan [default: only for a plan that keeps blocks "
                   "between requests, layerwise keep_resident].")
@force_option
@request_options
@json_option
def command(model: str, engine: str | None, plan: str | None, budget: int | None, device: str,
            hardware: str | None, scale: float, out_dir: Path | None, report_path: Path | None,
            steady_state: bool | None, force: bool, as_json: bool, **kwargs: object) -> None:
    """Run one request under one plan and show where its time went.

    The run folder is written whole or not at all; an existing run there is replaced only
    with --force."""
    device = preflight.device(device, note=stderr.print)
    if budget is not None:
        stderr.print(f"budget {describe_bytes(budget)}")
    request = request_overrides(kwargs)
    preflight.request_size(model, request)
    preflight.plan_matches_model(plan, model, scale=scale)
    out_dir = out_dir or _default_out_dir(model, device, plan)
    report_path = report_path or Path("reports") / f"{out_dir.name}.html"
    check_run_dir(out_dir, force=force)
    preflight.outputs(report=report_path)
    res = run_profile(model, plan=plan, budget_bytes=budget, device=device, hardware=hardware,
                      scale=scale, engine=engine, steady_state=steady_state, **request)
    paths = write_outputs(res, out_dir, report_path, force=force)
    r = res.request
    achieved = _achieved_h2d(res)
    data = {
        "model": res.model, "engine": res.engine, "device": res.device, "hardware": res.hardware,
        "plan": res.plan.name,
        "request": {"height": r.height, "width": r.width, "frames": r.frames, "steps": r.steps,
                    "cfg": r.cfg, "cfg_mode": r.cfg_mode, "batch": r.batch},
        "budget_bytes": res.budget_bytes, "latency_s": res.latency_s,
        "steady_state": bool(res.extra.get("steady_state")),
        "cold_latency_s": res.extra.get("cold_latency_s"), "compute_s": res.compute_s,
        "stall_s": res.stall_s, "h2d_bytes": res.h2d_bytes, "d2h_bytes": res.d2h_bytes,
        "peak_device_bytes": res.peak_device_bytes, "pinned_host_bytes": res.pinned_host_bytes,
        "achieved_h2d_bytes_per_s": achieved, "outputs": {k: str(v) for k, v in paths.items()},
    }
    lines = [
        f"[bold]{res.model}[/bold] ({res.engine}) {r.height}x{r.width}x{r.frames}, {r.steps} steps, "
        f"cfg {'on' if r.cfg else 'off'} — plan [bold]{res.plan.name}[/bold] on {res.device}"
        + (f" ({res.hardware})" if res.device == "sim" else ""),
        f"latency {res.latency_s:.3f} s: compute {res.compute_s:.3f} s, stalled on transfers "
        f"{res.stall_s:.3f} s"
        + (f" — steady state: the second of two back-to-back requests (the first, cold: "
           f"{res.extra['cold_latency_s']:.3f} s; peaks over both)"
           if res.extra.get("steady_state") else ""),
        f"moved H2D {format_bytes(res.h2d_bytes)}, D2H {format_bytes(res.d2h_bytes)}; "
        f"peak device memory {format_bytes(res.peak_device_bytes)} of {format_bytes(res.budget_bytes)}; "
        f"pinned host {format_bytes(res.pinned_host_bytes)}",
    ]
    if achieved == achieved and res.h2d_peak_bytes_per_s is not None:
        lines.append(f"achieved H2D {achieved / 1e9:.1f} GB/s "
                     f"({100 * achieved / res.h2d_peak_bytes_per_s:.0f}% of the {res.h2d_peak_bytes_per_s / 1e9:.1f} GB/s peak)")
    lines += [f"{name}: {paths[name]}" for name in ("run", "chrome_trace", "report")]
    emit(data, as_json=as_json, tables=[("stages", _stage_table(res))], lines=lines)


def _achieved_h2d(res: ProfileResult) -> float:
    trace = last_request(res.trace)
    loads = trace[(trace.kind == "load") & (trace.stream == "h2d")]
    busy = float((loads.end_s - loads.t_s).sum())
    return float(loads.bytes.sum()) / busy if busy > 0 else float("nan")


def _stage_table(res: ProfileResult) -> pd.DataFrame:
    table = stage_breakdown(last_request(res.trace))  # the steady state's second request
    cols = ["stage", "wall_s", "compute_s", "stall_s", "exposed_copy_s", "copy_s",
            "hidden_copy_s", "h2d_bytes", "d2h_bytes"]
    return table[[c for c in cols if c in table.columns]]


def _default_out_dir(model: str, device: str, plan: str | None) -> Path:
    """runs/<model>-<device>-<plan>, known before the run so that it is checked first."""
    return Path("runs") / f"{get_model(model).name}-{device}-{resolve_plan(plan).name}"


def write_outputs(res: ProfileResult, out_dir: Path, report: Path | None, *,
                  force: bool = False) -> dict[str, Path]:
    """The run folder (events, plan, schedule, results), its Chrome trace and HTML report,
    each written atomically."""
    paths = save_run(out_dir, res, force=force)
    run = load_run(out_dir)
    with atomic_path(out_dir / "trace.json.gz") as tmp:
        write_chrome_trace(run_to_chrome_trace(run), tmp)
    paths["chrome_trace"] = out_dir / "trace.json.gz"
    report = report or Path("reports") / f"{out_dir.name}.html"
    with atomic_path(report) as tmp:
        write_report(tmp, runs=[run])
    paths["report"] = report
    return paths
