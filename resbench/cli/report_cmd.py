"""`resbench report RUN_OR_STUDY...`: one self-contained HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import click

from resbench.cli import preflight
from resbench.cli.common import emit, json_option, stderr
from resbench.errors import InputError
from resbench.fileio import atomic_path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "report"


@click.command("report")
@click.argument("sources", nargs=-1, required=True, metavar="RUN_OR_STUDY...")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="HTML file to write (default reports/<name>.html).")
@click.option("--study", "study_name", default=None,
              help="Study name in a storage that holds several (default: all of them).")
@click.option("--budget-curve/--no-budget-curve", default=True,
              help="Re-simulate each run at other budgets (\"what a bigger budget buys\").")
@json_option
def command(sources: tuple[str, ...], out: Path | None, study_name: str | None,
            budget_curve: bool, as_json: bool) -> None:
    """Write an HTML report of saved runs (folders from `resbench profile`) and/or tuning
    studies (sqlite:///sweeps/x.db, a .db file or a journal .log). Several runs are compared
    side by side. The page works offline and embeds its numbers as JSON."""
    from resbench.report.build import write_report
    from resbench.run import is_run, is_unfinished, load_run

    preflight.outputs(out=out)  # before anything is loaded
    runs, studies = [], []
    for source in sources:
        if is_run(source) or is_unfinished(source):  # load_run says why the latter is not
            runs.append(load_run(source))
            continue
        from resbench.report.study import is_study_source, load_studies

        if is_study_source(source):
            studies.extend(load_studies(source, study_name))
            continue
        raise InputError(f"{source!r} is neither a run folder (with run.json) nor a study "
                         f"storage (sqlite:///..., .db, .log)")
    if out is None:
        names = [r.name for r in runs] + [s.study_name for s in studies]
        stem = _slug(names[0]) if len(names) == 1 else _slug("-vs-".join(names[:3]))
        out = Path("reports") / f"{stem}.html"
        preflight.outputs(out=out)
    stderr.print(f"building the report of {len(runs)} run(s) and {len(studies)} study(ies)")
    with atomic_path(out) as tmp:
        write_report(tmp, runs, studies, budget_curve=budget_curve)
    path = out
    size = path.stat().st_size
    emit({"report": str(path), "bytes": size, "runs": [r.name for r in runs],
          "studies": [s.study_name for s in studies]}, as_json=as_json,
         lines=[f"report: {path} ({size / 1e6:.1f} MB); open it in any browser (works offline)"])
