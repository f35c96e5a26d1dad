"""`resbench export trace RUN`: the run's events as a Chrome trace for Perfetto."""

from __future__ import annotations

from pathlib import Path

import click

from resbench.cli import preflight
from resbench.cli.common import emit, json_option
from resbench.fileio import atomic_path


@click.group("export")
def command() -> None:
    """Export a saved run in other tools' formats."""


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
