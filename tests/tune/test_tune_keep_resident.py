"""The tuner and layerwise `keep_resident`: the shipped sweeps search it, a plan with it is
scored on the steady state (the second of two back-to-back requests), and the tuned plan's
header says so."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from tune_setup import BUDGET, REPO, make_options

from resbench.drivers.replay import simulate
from resbench.hardware import HardwareProfile
from resbench.residency.plan import Plan, plan_from_dict
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig
from resbench.schedule import Schedule
from resbench.tune import tune
from resbench.tune.objective import Evaluator
from resbench.tune.runner import _evaluation
from resbench.tune.sweep import load_sweep


def test_the_shipped_sweeps_search_it_for_streamed_dits(schedule: Schedule) -> None:
    for name, param in (("default", "dit.layerwise.keep_resident"),
                        ("wan", "transformer.layerwise.keep_resident")):
        space = load_sweep(REPO / "sweeps" / f"{name}.toml").bind(schedule)
        knobs = {k.param: k for e in space.entries for c in e.choices for k in c.knobs}
        assert knobs[param].distribution is not None
        assert set(knobs[param].distribution.choices) == {False, True}
        assert space.frugal_plan().keeps_across_requests is False


def test_a_plan_that_keeps_blocks_is_scored_on_its_second_request(
        schedule: Schedule, profile: HardwareProfile) -> None:
    plan = Plan(components=(("text_encoder", OffloadConfig()), ("vae", OffloadConfig()),
                            ("dit", LayerwiseConfig(resident_blocks=4, keep_resident=True))))
    budget = 3 * BUDGET
    evaluator = Evaluator(schedule, profile, budget_bytes=budget,
                          host_budget_bytes=profile.host_ram_bytes)
    ev = evaluator.evaluate(plan)
    steady = simulate(schedule, plan, profile, capacity_bytes=budget)
    cold = simulate(schedule, plan, profile, capacity_bytes=budget, steady_state=False)
    assert ev.fits and ev.steady_state and steady.steady_state
    assert ev.latency_s == steady.latency_s < cold.latency_s == ev.cold_latency_s
    assert ev.user_attrs()["cold_latency_s"] == ev.cold_latency_s


def test_a_tuned_plan_with_the_option_says_steady_state_in_its_header(tmp_path: Path,
                                                                      schedule: Schedule) -> None:
    sweep = tmp_path / "keep.toml"
    sweep.write_text("""schema = 1
[plan]
policy = "static"
[components.text_encoder]
strategies = ["offload"]
[components.transformer]
strategies = ["layerwise"]
[components.transformer.layerwise]
resident_blocks = { low = 1, high = 4 }
keep_resident = true
[components.vae]
strategies = ["offload"]
""")
    result = tune(make_options(tmp_path, n_trials=3, sweep=sweep, budget_bytes=3 * BUDGET),
                  schedule=schedule)
    best = result.best
    assert best.steady_state and best.cold_latency_s is not None
    header = result.plan_toml().split("\n\n")[0]
    assert ("(simulated) in steady state (the second of two back-to-back requests, the "
            "resident blocks kept from the first; the first, cold: "
            f"{best.cold_latency_s:.3f} s; peaks over both)") in header
    # what reads the simulated latency from a header (benchmarks/engines_cells.py) still can
    assert float(re.search(r"^# Latency ([0-9.]+) s \(simulated\)", header, re.M)[1]) == round(
        best.latency_s, 3)
    plan = plan_from_dict(tomllib.loads(result.plan_toml()))
    assert plan.keeps_across_requests
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    trial = optuna.load_study(study_name="test", storage=storage).trials[result.best_trial]
    assert _evaluation(trial, best.capacity_bytes).cold_latency_s == best.cold_latency_s
