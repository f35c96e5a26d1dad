"""`resbench export trace RUN`: the run's events as a Chrome trace for Perfetto;
`resbench export sglang PLAN` / `resbench export diffusers PLAN`: a plan as sglang launch
flags, or as the Python that applies it to a diffusers pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from resbench.cli import preflight
from resbench.cli.common import SIZE, emit, json_option, model_option
from resbench.fileio import atomic_path


@click.group("export")
def command() -> None:
    """Export a saved run or a plan in other tools' formats."""


@command.command("trace")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path, exists=True))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output file; .json.gz is gzipped (default RUN/trace.json.gz).")
@click.option("--detail", type=click.Choice(["auto", "all", "ends"]), default="auto",
              help="ends: per-unit events for the first and last denoising step only, the "
                   "others aggregated; auto: ends when the trace would pass --max-events.")
@click.option("--max-events", type=click.IntRange(min=1), default=1_000_000,
              help="Event budget for --detail auto.")
@json_option
def trace(run_dir: Path, out: Path | None, detail: str, max_events: int, as_json: bool) -> None:
    """Chrome Trace Event JSON: open it in ui.perfetto.dev or chrome://tracing (one track
    per GPU queue, memory counters, decisions as instants, prefetch → compute arrows,
    ProfilerStep#N per denoising step; HTA reads it too)."""
    from resbench.report.chrome_trace import run_to_chrome_trace, write_chrome_trace
    from resbench.run import load_run

    preflight.outputs(out=out)
    run = load_run(run_dir)
    doc = run_to_chrome_trace(run, detail=detail, max_events=max_events)
    path = out or (run.path or run_dir) / "trace.json.gz"
    with atomic_path(path) as tmp:
        write_chrome_trace(doc, tmp)
    events = len(doc["traceEvents"])
    emit({"trace": str(path), "events": events, "bytes": path.stat().st_size,
          "detail": doc["resbench"]["detail"]}, as_json=as_json,
         lines=[f"trace: {path} ({events:,} events, {doc['resbench']['detail']}); "
                "open it in ui.perfetto.dev (drag the file in) or chrome://tracing"])


def _plan_and_kinds(plan_name: str, model: str) -> tuple[Any, dict[str, str], str]:
    """The plan, the model's component kinds (the zoo's: no diffusers import) and how a
    snippet names the plan (a preset name, or the file's absolute path)."""
    from resbench.models.registry import get_model
    from resbench.resources import resolve_plan

    plan = resolve_plan(plan_name)
    spec = get_model(model)
    kinds = {c.name: c.kind for c in spec.components}
    plan.check_components(kinds, source=plan_name)
    path = Path(plan_name)
    ref = str(path.resolve()) if path.suffix == ".toml" or path.exists() else plan_name
    return plan, kinds, ref


@command.command("sglang")
@click.argument("plan_name", metavar="PLAN")
@model_option
@json_option
def sglang(plan_name: str, model: str, as_json: bool) -> None:
    """The sglang diffusion launch flags closest to PLAN (a plan TOML or a preset name),
    then, line by line, what of the plan those flags cannot say."""
    from resbench.export.sglang import sglang_flags

    plan, kinds, _ = _plan_and_kinds(plan_name, model)
    out = sglang_flags(plan, kinds)
    if as_json:
        emit({"plan": plan.name, "model": model, "flags": list(out.flags),
              "unexpressed": list(out.unexpressed)}, as_json=True)
        return
    click.echo(out.render())


@command.command("diffusers")
@click.argument("plan_name", metavar="PLAN")
@model_option
@click.option("--device", default="cuda", show_default=True,
              help="Where the pipeline computes (cuda, cuda:N, or cpu to check a plan).")
@click.option("--budget", type=SIZE, default=None,
              help="Device memory the manager plans within [default: the whole device].")
@json_option
def diffusers(plan_name: str, model: str, device: str, budget: int | None, as_json: bool) -> None:
    """The Python that applies PLAN to a diffusers pipeline bound to `pipe`: diffusers' own
    call where it says exactly the same, else `resbench.apply_plan`."""
    from resbench.export.diffusers_snippet import diffusers_snippet

    plan, kinds, ref = _plan_and_kinds(plan_name, model)
    code = diffusers_snippet(plan, kinds, plan_ref=ref, device=device, budget_bytes=budget)
    if as_json:
        emit({"plan": plan.name, "model": model, "python": code}, as_json=True)
        return
    click.echo(code, nl=False)
