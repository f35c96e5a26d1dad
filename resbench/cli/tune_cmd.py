"""`resbench tune`: Optuna search for the fastest plan under a device memory budget."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import optuna
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from resbench.cli import preflight
from resbench.cli.common import (
    SIZE,
    emit,
    engine_option,
    json_option,
    model_option,
    request_options,
    request_overrides,
    stderr,
)
from resbench.fileio import atomic_path, atomic_write_text
from resbench.tune import TuneInterrupted, TuneOptions, tune
from resbench.tune.result import search_note
from resbench.tune.study import OBJECTIVES, SAMPLERS, default_storage
from resbench.tune.trial_log import trial_line
from resbench.units import format_bytes


class TuneProgress:
    """A transient rich bar on stderr, advanced by an optuna callback after each trial."""

    def __init__(self, total: int | None, *, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("tuning"), BarColumn(), MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=stderr, transient=True, disable=not enabled, redirect_stdout=False,
            redirect_stderr=False)
        self.task = self.progress.add_task("tune", total=total, best="–")

    def __enter__(self) -> TuneProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = "–"
        feasible = [t.values[0] for t in study.get_trials(deepcopy=False)
                    if t.values and t.constraints and all(v <= 0 for v in t.constraints.values())]
        if feasible:
            best = f"{min(feasible):.3f} s"
        self.progress.update(self.task, advance=1, best=best)


class TrialLog:
    """An optuna callback logging one line per trial this worker finished
    (`resbench.tune.trial_log`), where the progress bar is off: a log file, `--json`."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def __call__(self, _study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.log(trial_line(trial))


def _objectives(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if names not in (("latency",), ("latency", "peak-memory")):
        raise click.BadParameter(f"{value!r}: use `latency`, or `latency,peak-memory` for the "
                                 f"Pareto front (objectives: {', '.join(OBJECTIVES)})")
    return names


def _screen_fraction(_ctx: click.Context, _param: click.Parameter, value: str) -> float | None:
    if value.strip().lower() == "off":
        return None
    try:
        pct = float(value.strip().rstrip("%"))
    except ValueError:
        pct = -1.0
    if not pct >= 0:  # also NaN
        raise click.BadParameter(f"{value!r}: give a percentage ≥ 0 (e.g. 10) or `off`")
    return pct / 100.0


@click.command("tune")
@model_option
@engine_option
@click.option("--budget", type=SIZE, required=True,
              help="Device memory budget: 48GB (powers of 1000) or 44.7GiB (powers of 1024).")
@click.option("--host-budget", type=SIZE, default=None,
              help="Pinned host memory budget [default: the profile's host RAM].")
@click.option("--hardware", default=None,
              help="Hardware preset or profile TOML [default: detect the GPU, else h100-80g].")
@click.option("--sweep", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Search space TOML [default: sweeps/<family>.toml, else sweeps/default.toml].")
@click.option("--n-trials", type=click.IntRange(min=1), default=200,
              help="Trials this run adds to the study.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after this many seconds.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="[default: tpe; nsga2 with --objectives latency,peak-memory]")
@click.option("--objectives", default="latency", callback=_objectives,
              help="`latency`, or `latency,peak-memory` for the latency/memory Pareto front.")
@click.option("--seed", type=int, default=None, help="Sampler seed (reproducible search).")
@click.option("--storage", default=None,
              help="optuna storage URL (sqlite:///x.db, postgresql://...) or a .log journal "
                   "file [default: sqlite:///sweeps/<study>.db].")
@click.option("--study-name", default=None,
              help="[default: <model>__<hardware>__<budget>__<request>]")
@click.option("--device", type=click.Choice(["sim", "cuda"]), default="sim",
              help="Score trials in the simulator, or measure each on the GPU.")
@click.option("--screen-margin", default="10", callback=_screen_fraction, metavar="PCT|off",
              help="With --device cuda: a plan the simulator finds short of memory even at the "
                   "budget plus PCT % is recorded infeasible without a GPU run; `off` runs "
                   "every plan [default: 10].")
@click.option("--validate", type=click.IntRange(min=0), default=0, metavar="K",
              help="Re-run the top K simulated plans on the GPU; the best real one wins.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Tuned plan TOML [default: strategies/<model>/<hardware>-<budget>.tuned.toml].")
@click.option("--presets", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of preset plans to compare against and to try first "
                   "[default: strategies/presets].")
@click.option("--scale", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0,
              help="Shrink the model (tests).")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="HTML report of the study [default: reports/<study>.html].")
@click.option("--no-report", is_flag=True, help="Do not write the HTML report.")
@request_options
@json_option
def command(model: str, engine: str | None, budget: int, host_budget: int | None,
            hardware: str | None, sweep: Path | None, n_trials: int, timeout: float | None,
            sampler: str | None, objectives: tuple[str, ...], seed: int | None,
            storage: str | None, study_name: str | None, device: str,
            screen_margin: float | None, validate: int,
            out: Path | None, presets: Path | None, scale: float, report_path: Path | None,
            no_report: bool, as_json: bool, **kwargs: Any) -> None:
    """Search strategy assignments and buffer margins for the fastest plan under --budget.

    Rerunning the same command resumes the study; two processes on one storage share it.
    """
    preflight.outputs(out=out, report=None if no_report else report_path)
    # The default files are named after the study, known later; their folders are known now.
    preflight.folders(out=None if out else "strategies",
                      report=None if no_report or report_path else "reports")
    request = request_overrides(kwargs)
    preflight.request_size(model, request)
    options = TuneOptions(
        model=model, engine=engine, budget_bytes=budget, host_budget_bytes=host_budget,
        hardware=hardware,
        sweep=sweep, n_trials=n_trials, timeout_s=timeout, sampler=sampler,
        objectives=objectives, seed=seed, storage=storage, study_name=study_name,
        device=device, validate=validate, presets_dir=presets, scale=scale,  # type: ignore[arg-type]
        screen_fraction=screen_margin,
        request=request)

    def log(line: str) -> None:
        stderr.print(line, highlight=False, markup=False, soft_wrap=True)

    bar = stderr.is_terminal and not as_json
    try:
        with TuneProgress(n_trials, enabled=bar) as progress:
            result = tune(options, callbacks=[progress] if bar else [TrialLog(log), progress],
                          log=log)
    except TuneInterrupted as exc:
        trials = "trial" if exc.finished == 1 else "trials"
        stderr.print(f"interrupted: study {exc.study_name} keeps its {exc.complete} complete "
                     f"and {exc.failed} failed {trials} in {exc.storage}; run the same command "
                     f"again to resume (a trial cut short is marked FAIL)", highlight=False,
                     markup=False, soft_wrap=True)
        # SystemExit, not ctx.exit: `main` runs click with standalone_mode=False, which turns
        # click's Exit into a return value it does not pass on
        sys.exit(130)
    path = atomic_write_text(out or result.default_out_path(), result.plan_toml())
    best = result.best
    data = {**result.to_dict(), "out": str(path)}
    lines = [
        f"best plan: trial {result.best_trial} of {result.trials_total} "
        f"({result.trials_feasible} feasible, {result.trials_run} this run); "
        f"latency {best.latency_s:.3f} s ({result.result_note}), peak device "
        f"{format_bytes(best.peak_device_bytes)} of {format_bytes(result.budget_bytes)}, "
        f"pinned host {format_bytes(best.pinned_host_bytes)}",
        f"wrote {path}",
        f"study {result.study_name} in {result.storage} (optuna-dashboard {result.storage})",
    ]
    note = search_note(result.last_gain_trial, result.trials_total)
    if note:
        lines.insert(1, note)
    if not no_report:
        report = write_study_report(result.study_name, storage or default_storage(result.study_name),
                                    report_path or Path("reports") / f"{result.study_name}.html")
        data["report"] = str(report)
        lines.append(f"report: {report}")
    tables = [("best plan", result.components_frame()),
              ("comparison (speedup = that plan's latency / tuned latency)",
               result.comparison_frame())]
    if result.pareto:
        tables.append(("Pareto front (latency vs peak device memory)", result.pareto_frame()))
    emit(data, as_json=as_json, tables=tables, lines=lines)


def write_study_report(study_name: str, storage: str, path: Path) -> Path:
    """The study's HTML report (history, importances, plan vs presets, budget curve)."""
    import optuna

    from resbench.report.build import write_report
    from resbench.tune.study import open_storage

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    with atomic_path(path) as tmp:
        write_report(tmp, studies=[study])
    return path


# `request_options` brings the request's --seed, which changes no timing; `--seed` here seeds
# the sampler, so the request's is dropped to keep option names unique.
command.params = [p for p in command.params
                  if not (p.name == "seed" and p.help == "Request seed.")]
