"""`tune` end to end on a tiny model: resume, interruption, constraints, presets, results."""

from __future__ import annotations

import contextlib
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from tune_setup import TINY_SWEEP, make_options

from resbench.analysis.budget import frugal_plan, min_budget_bytes
from resbench.errors import DoesNotFitError
from resbench.execution import RunResult, SimBackend
from resbench.hardware import HardwareProfile
from resbench.residency.plan import HostOptions, Plan
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig, ResidentConfig
from resbench.schedule import Schedule
from resbench.tune import NoFeasiblePlanError, TuneInterrupted, tune
from resbench.tune.objective import INFEASIBLE_LATENCY_S, Evaluation, Evaluator
from resbench.tune.space import SearchSpace
from resbench.tune.sweep import load_sweep

COMPLETE = (optuna.trial.TrialState.COMPLETE,)


def load(tmp_path: Path, name: str = "test") -> optuna.Study:
    if (tmp_path / "study.db").exists():
        return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    return optuna.load_study(study_name=name, storage=journal)


@pytest.mark.parametrize("storage", ["study.db", "study.log"])
def test_rerunning_resumes_the_study_and_keeps_finished_trials(tmp_path: Path, storage: str,
                                                               schedule: Schedule) -> None:
    where = str(tmp_path / storage)
    first = tune(make_options(tmp_path, n_trials=6, storage=where), schedule=schedule)
    before = [(t.number, t.params) for t in load(tmp_path).trials]
    second = tune(make_options(tmp_path, n_trials=5, storage=where), schedule=schedule)
    study = load(tmp_path)
    assert len(study.get_trials(states=COMPLETE)) == 11
    assert [(t.number, t.params) for t in study.trials[:6]] == before
    assert (first.trials_run, second.trials_run, second.trials_total) == (6, 5, 11)
    assert second.best.latency_s <= first.best.latency_s
    # the resumed run does not replay the first run's draws
    assert [t.params for t in study.trials[6:]] != [p for _, p in before[:5]]


def test_interruption_keeps_the_finished_trials(tmp_path: Path, schedule: Schedule) -> None:
    k = 4

    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == k - 1:
            raise KeyboardInterrupt

    with pytest.raises(TuneInterrupted) as err:
        tune(make_options(tmp_path, n_trials=20), schedule=schedule, callbacks=[stop])
    assert (err.value.complete, err.value.failed, err.value.study_name) == (k, 0, "test")
    assert len(load(tmp_path).get_trials(states=COMPLETE)) == k
    resumed = tune(make_options(tmp_path, n_trials=3), schedule=schedule)
    assert resumed.trials_total == k + 3


def test_infeasible_trials_are_recorded_and_the_best_is_feasible(tmp_path: Path,
                                                                 schedule: Schedule) -> None:
    result = tune(make_options(tmp_path, n_trials=30, sampler="random"), schedule=schedule)
    trials = load(tmp_path).get_trials(states=COMPLETE)
    no_fit = [t for t in trials if "missing_bytes" in t.user_attrs]
    assert no_fit and all(t.constraints["peak_device"] >= t.user_attrs["missing_bytes"] > 0
                          and t.value == INFEASIBLE_LATENCY_S for t in no_fit)
    best = next(t for t in trials if t.number == result.best_trial)
    assert all(v <= 0 for v in best.constraints.values())
    assert result.best.fits and result.best.latency_s == best.value
    assert result.trials_feasible == sum(all(v <= 0 for v in t.constraints.values())
                                         for t in trials)
    assert min(t.value for t in trials if all(v <= 0 for v in t.constraints.values())) == best.value


def test_no_feasible_plan_says_the_smallest_budget(tmp_path: Path, schedule: Schedule,
                                                   space: SearchSpace,
                                                   profile: HardwareProfile) -> None:
    with pytest.raises(NoFeasiblePlanError) as err:
        tune(make_options(tmp_path, budget_bytes=20_000_000, n_trials=8), schedule=schedule)
    exc = err.value
    assert isinstance(exc, DoesNotFitError) and exc.exit_code == 3
    assert exc.min_budget_bytes is not None and exc.min_budget_bytes > 20_000_000
    assert "the smallest budget any plan fits in is" in str(exc)
    # one figure, the one `profile` quotes too: the frugal plan fits exactly there
    assert exc.min_budget_bytes == min_budget_bytes(schedule, profile)
    at = Evaluator(schedule, profile, budget_bytes=exc.min_budget_bytes,
                   host_budget_bytes=profile.host_ram_bytes)
    below = Evaluator(schedule, profile, budget_bytes=int(exc.min_budget_bytes * 0.99),
                      host_budget_bytes=profile.host_ram_bytes)
    assert at.evaluate(frugal_plan()).fits
    assert not below.evaluate(frugal_plan()).fits


def write_presets(folder: Path) -> dict[str, Plan]:
    presets = {
        "a-streamed": Plan(name="a-streamed", components=(
            ("default", LayerwiseConfig(group_size=1, prefetch_depth=1)),)),
        "b-mixed": Plan(name="b-mixed", host=HostOptions(pinned=False), components=(
            ("dit", LayerwiseConfig(group_size=2, prefetch_depth=2, resident_blocks=3,
                                    placement="spaced")),
            ("text_encoder", OffloadConfig(prefetch=False)),
            ("vae", LayerwiseConfig(group_size=2, prefetch_depth=0)))),
        "c-capped": Plan(name="c-capped", host=HostOptions(pinned_budget_bytes=1),
                         components=(("default", LayerwiseConfig()),)),
        "d-too-big": Plan(name="d-too-big", components=(("default", ResidentConfig()),)),
    }
    folder.mkdir()
    for name, plan in presets.items():
        plan.save(folder / f"{name}.toml")
    return presets


def test_presets_that_fit_and_are_in_the_space_are_the_first_trials(
        tmp_path: Path, schedule: Schedule) -> None:
    presets = write_presets(tmp_path / "presets")
    space = load_sweep(TINY_SWEEP).bind(schedule)
    result = tune(make_options(tmp_path, n_trials=4, presets_dir=tmp_path / "presets"),
                  schedule=schedule)
    rows = {b.name: b for b in result.baselines}
    queued = [name for name, b in rows.items() if b.params is not None and b.evaluation
              and b.evaluation.feasible(result.host_budget_bytes)]
    assert queued == ["a-streamed", "b-mixed"]
    trials = load(tmp_path).trials
    for trial, name in zip(trials, queued, strict=False):
        assert trial.params == space.params_for(presets[name]) == rows[name].params
    assert [t.user_attrs.get("preset") for t in trials[:4]] == [*queued, "frugal", None]
    assert rows["c-capped"].params is None and "pinned_budget" in rows["c-capped"].why
    assert rows["d-too-big"].params is not None  # in the space, but it does not fit: not queued
    assert rows["d-too-big"].evaluation is not None and not rows["d-too-big"].evaluation.fits
    # resuming does not queue them again
    tune(make_options(tmp_path, n_trials=2, presets_dir=tmp_path / "presets"), schedule=schedule)
    assert len([t for t in load(tmp_path).trials if t.user_attrs.get("preset")]) == 3


def test_result_tables_json_and_plan_file(tmp_path: Path, schedule: Schedule) -> None:
    write_presets(tmp_path / "presets")
    result = tune(make_options(tmp_path, n_trials=8, presets_dir=tmp_path / "presets"),
                  schedule=schedule)
    comparison = result.comparison_frame()
    assert list(comparison.plan[:1]) == ["tuned"] and comparison.speedup[0] == 1.0
    fits = comparison[(comparison.source == "preset") & (comparison.fits == "yes")]
    assert len(fits) >= 2 and (fits.speedup >= 1.0).all()  # presets were trials: never better
    assert result.lower_bound_s <= result.best.latency_s
    assert set(result.components_frame().component) == {"text_encoder", "transformer", "vae"}
    doc: dict[str, Any] = result.to_dict()
    assert doc["schema"] == 1 and doc["best"]["latency_s"] == result.best.latency_s
    path = result.save_plan(tmp_path / "out" / "tuned.toml")
    text = path.read_text()
    assert text.startswith("# Tuned by `resbench tune`") and "vs preset a-streamed" in text
    plan = tomllib.loads(text)
    assert plan["schema"] == 1 and plan["name"].endswith("/50MB/tuned")
    assert result.default_out_path() == Path(
        "strategies/wan2.1-t2v-1.3b/h100-80g-50MB-scale0.05.tuned.toml")


def test_pareto_front_with_nsga2(tmp_path: Path, schedule: Schedule) -> None:
    result = tune(make_options(tmp_path, n_trials=12, objectives=("latency", "peak-memory"),
                               budget_bytes=80_000_000), schedule=schedule)
    assert result.sampler == "nsga2" and result.pareto
    latencies = [e.latency_s for e in result.pareto]
    assert latencies == sorted(latencies) and result.best.latency_s == latencies[0]
    peaks = [e.peak_device_bytes for e in result.pareto]
    assert peaks == sorted(peaks, reverse=True)


def test_validate_without_a_gpu_says_the_result_is_simulated(tmp_path: Path,
                                                             schedule: Schedule) -> None:
    lines: list[str] = []
    result = tune(make_options(tmp_path, n_trials=5, validate=2), schedule=schedule,
                  log=lines.append)
    assert result.result_note.startswith("simulated") and not result.validation
    assert any("the result is simulated" in line for line in lines)


class FakeGpu(SimBackend):
    """Stands in for the CUDA backend: 'real' latency = simulated + 1 s per GiB moved."""

    kind = "cuda"
    measured = True
    runs: list[str] = []

    def run_once(self, plan: Plan, budget_bytes: int | None, *, trace: bool,
                 keep_output: bool) -> RunResult:
        FakeGpu.runs.append(plan.name)
        r = super().run_once(plan, budget_bytes, trace=trace, keep_output=keep_output)
        return dataclasses.replace(r, latency_s=r.latency_s + r.h2d_bytes / 2**30,
                                   device_kind="cuda", measured=True)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> type[FakeGpu]:
    FakeGpu.runs = []
    monkeypatch.setattr("resbench.tune.runner.cuda_unavailable", lambda: None)
    monkeypatch.setattr("resbench.tune.runner.make_backend",
                        lambda device, spec, request, **kw: FakeGpu(spec, request, **kw))
    return FakeGpu


def test_validate_reruns_the_top_plans_and_the_real_best_wins(
        tmp_path: Path, schedule: Schedule, fake_gpu: type[FakeGpu]) -> None:
    presets = write_presets(tmp_path / "presets")
    result = tune(make_options(tmp_path, n_trials=15, validate=3,
                               presets_dir=tmp_path / "presets"), schedule=schedule)
    assert len(result.validation) == 3
    real = [v.real_latency_s for v in result.validation if v.real_latency_s is not None]
    assert result.best.measured and result.best.latency_s == min(real)
    assert result.result_note.startswith("measured on the GPU")
    # every preset that fits, and all-resident, was measured in the same process
    fitting = [b for b in result.baselines if b.evaluation is not None and b.evaluation.fits]
    assert fitting and all(b.evaluation.measured for b in fitting)
    assert result.all_resident.measured
    assert {b.name for b in fitting} <= set(fake_gpu.runs) and set(presets) & set(fake_gpu.runs)


def test_a_measured_tuned_plan_is_never_compared_with_simulated_figures(
        tmp_path: Path, schedule: Schedule, fake_gpu: type[FakeGpu]) -> None:
    """Regression: after --validate the header compared the measured tuned latency with the
    presets' simulated ones ("0.98x vs preset ... (6.275 s)")."""
    write_presets(tmp_path / "presets")
    result = tune(make_options(tmp_path, n_trials=6, validate=2,
                               presets_dir=tmp_path / "presets"), schedule=schedule)
    header = [line for line in result.plan_toml().splitlines() if line.startswith("#")]
    ratios = [line for line in header if "x vs " in line]
    assert ratios and all("measured" in line and "simulated" not in line for line in ratios)
    frame = result.comparison_frame()
    fits = frame[frame.fits == "yes"]
    assert set(fits.latency) == {"measured"}
    # with a simulated preset beside a measured best, no ratio is printed for it
    sim_preset = dataclasses.replace(result.baselines[0].evaluation, measured=False)
    mixed = dataclasses.replace(result, baselines=(dataclasses.replace(
        result.baselines[0], evaluation=sim_preset),))
    line = next(x for x in mixed.plan_toml().splitlines() if result.baselines[0].name in x
                and x.startswith("# "))
    assert "x vs" not in line and "simulated" in line and "not compared" in line


def test_measured_trials_without_a_stall_figure_store_none_not_zero() -> None:
    """Regression: GPU tuning recorded stall_s = 0 when the run had no trace."""
    ev = Evaluation(plan=Plan(), fits=True, latency_s=1.0, peak_device_bytes=1,
                    pinned_host_bytes=0, stall_s=None, measured=True)
    assert "stall_s" not in ev.user_attrs()
    assert Evaluation(plan=Plan(), fits=True, latency_s=1.0, peak_device_bytes=1,
                      pinned_host_bytes=0, stall_s=0.25).user_attrs()["stall_s"] == 0.25


def test_a_gpu_tune_that_fails_midway_still_gives_the_weights_back(
        tmp_path: Path, schedule: Schedule, fake_gpu: type[FakeGpu],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `tune --device cuda` closed its backend only on success, so an error
    during the search left the pinned host copies and the device placeholders held."""
    closed: list[bool] = []
    monkeypatch.setattr(FakeGpu, "close", lambda self: closed.append(True), raising=False)

    def broken(self, *args, **kwargs):
        raise RuntimeError("the search broke")

    monkeypatch.setattr("resbench.tune.runner.Objective.__call__", broken)
    with pytest.raises(RuntimeError, match="the search broke"):
        tune(make_options(tmp_path, n_trials=3, device="cuda"), schedule=schedule)
    assert closed == [True]


def test_gpu_weights_are_built_before_any_budget_applies(
        tmp_path: Path, schedule: Schedule, fake_gpu: type[FakeGpu],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (2 x H200, `tune --device cuda --budget 16GB` with no presets): the CUDA
    backend drew its weights on the card at its first run, inside that run's memory
    fraction, so a model larger than the budget (FLUX.1-dev's 23.8 GB transformer under
    16 GB) could not even be built and every worker ended with an internal error."""
    events: list[str] = []

    @contextlib.contextmanager
    def budget(self, budget_bytes):
        events.append("budget on" if budget_bytes is not None else "whole card")
        yield
        events.append("budget off")

    monkeypatch.setattr(FakeGpu, "budget", budget, raising=False)
    monkeypatch.setattr(FakeGpu, "prepare", lambda self: events.append("prepare"),
                        raising=False)
    tune(make_options(tmp_path, n_trials=2, device="cuda"), schedule=schedule)
    assert events and events[0] == "prepare"
    depth = 0
    for e in events:
        depth += {"budget on": 1, "whole card": 1, "budget off": -1}.get(e, 0)
        assert e != "prepare" or depth == 0


def test_a_host_budget_below_the_model_caps_every_pinned_plan(tmp_path: Path,
                                                              schedule: Schedule) -> None:
    """Half the model's bytes of pinned host memory: every pinned trial plan carries the cap
    (the tuner no longer has only all-or-nothing), and every trial, the best included, pins
    within it."""
    weights = sum(u.weight_bytes for u in schedule.units)
    host = weights // 2
    result = tune(make_options(tmp_path, n_trials=8, sampler="random", host_budget_bytes=host),
                  schedule=schedule)
    trials = load(tmp_path).get_trials(states=COMPLETE)
    plans = [tomllib.loads(t.user_attrs["plan_toml"])["host"] for t in trials]
    assert all(p.get("pinned_budget") == host for p in plans if p["pinned"])
    assert any(p["pinned"] for p in plans)
    assert all(t.user_attrs["pinned_host_bytes"] <= host for t in trials)
    assert result.best.pinned_host_bytes <= host
    assert result.best.plan.host.pinned_budget_bytes in (None, host)
