"""`resbench compare RUN_A RUN_B`: two runs side by side; a regression gate for CI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import pandas as pd

from resbench.cli.common import emit, json_option, stderr
from resbench.units import format_bytes

REGRESSION_EXIT = 4


@click.command("compare")
@click.argument("run_a", metavar="RUN_A", type=click.Path(path_type=Path, exists=True))
@click.argument("run_b", metavar="RUN_B", type=click.Path(path_type=Path, exists=True))
@click.option("--fail-on", type=float, default=None, metavar="PCT",
              help=f"Exit {REGRESSION_EXIT} when B's latency is more than PCT percent above A's.")
@json_option
def command(run_a: Path, run_b: Path, fail_on: float | None, as_json: bool) -> None:
    """Metrics of two saved runs side by side (+ worse, - better, as asv compare)."""
    from resbench.analysis.compare import compare_runs, slowdown_pct
    from resbench.run import load_run

    a, b = load_run(run_a), load_run(run_b)
    table = compare_runs(a, b)
    slower = slowdown_pct(a, b)
    regressed = fail_on is not None and slower > fail_on
    verdict = (f"B is {abs(slower):.2f}% {'slower' if slower > 0 else 'faster'} than A"
               if abs(slower) >= 0.005 else "B's latency equals A's")
    if fail_on is not None:
        verdict += f" (limit {fail_on:g}%): {'regression' if regressed else 'ok'}"
    emit({"a": a.name, "b": b.name, "slowdown_pct": slower, "fail_on_pct": fail_on,
          "regression": regressed}, as_json=as_json,
         tables=[("metrics", table if as_json else _readable(table))],
         lines=[f"A: {a.name} ({a.path})", f"B: {b.name} ({b.path})", verdict])
    if regressed:
        stderr.print(f"regression: {verdict}")
        # SystemExit, not ctx.exit: `resbench.cli.main` runs click with standalone_mode=False,
        # which turns ctx.exit into a return value that it does not pass on
        sys.exit(REGRESSION_EXIT)


def _show(metric: str, value: Any) -> str:
    if metric.endswith("_bytes_per_s"):
        return f"{value / 1e9:,.1f} GB/s"
    if metric.endswith("_bytes"):
        return format_bytes(value)
    if metric.endswith("_s"):
        return f"{value:,.3f} s"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3f}"


def _readable(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for col in ("a", "b"):
        out[col] = [_show(m, v) for m, v in zip(table["metric"], table[col], strict=True)]
    out["change_pct"] = [f"{v:+.2f}%" for v in table["change_pct"]]
    return out.rename(columns={"change_pct": "change"})
