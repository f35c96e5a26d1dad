"""`tune` chooses how to keep a merged LoRA copy: resident, snapshot, or reload and re-merge."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import optuna
import pytest

from resbench.errors import InputError
from resbench.pipeline import Request
from resbench.schedule import Schedule
from resbench.testing.refine import REFINER, record_toy
from resbench.testing.synthetic import ideal_profile
from resbench.tune.objective import Evaluator, Objective
from resbench.tune.space import SearchSpace
from resbench.tune.sweep import MERGED_CHOICES, load_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)
REQUEST = Request(height=1, width=1, steps=2, guidance=1.0, cfg=False)
SWEEP = """schema = 1
name = "toy"
[plan]
policy = "static"
pinned = true
[components.default]
strategies = ["offload", "layerwise"]
"""


@functools.cache
def toy() -> Schedule:
    return record_toy(REQUEST)


def space(tmp_path: Path, text: str = SWEEP) -> SearchSpace:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return load_sweep(path).bind(toy())


def best(space: SearchSpace, budget_bytes: int) -> dict[str, object]:
    """Every plan of the space scored as `tune` scores them; the fastest that fits."""
    evaluator = Evaluator(toy(), ideal_profile(), budget_bytes=budget_bytes,
                          host_budget_bytes=1 << 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.BruteForceSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(Objective(space, evaluator), n_trials=200)
    feasible = [t for t in study.trials if all(v <= 0 for v in t.constraints.values())]
    return min(feasible, key=lambda t: t.value).params


def test_the_merged_component_gets_its_own_entry_with_the_three_choices(tmp_path: Path) -> None:
    entries = {e.key: e for e in space(tmp_path).entries}
    assert REFINER not in entries["default"].members
    assert entries[REFINER].members == (REFINER,)
    assert tuple(c.name for c in entries[REFINER].choices) == MERGED_CHOICES == (
        "resident", "snapshot", "offload")


def test_tune_keeps_the_merged_copy_resident_when_it_fits_else_snapshots_it(
        tmp_path: Path) -> None:
    s = space(tmp_path)
    roomy = best(s, 1 << 30)
    assert roomy[f"{REFINER}.strategy"] == "resident"
    evaluator = Evaluator(toy(), ideal_profile(), budget_bytes=1 << 30, host_budget_bytes=1 << 40)
    plans = {name: s.plan_from_params({**roomy, f"{REFINER}.strategy": name,
                                       f"{REFINER}.{name}.prefetch": True})
             for name in MERGED_CHOICES}
    peak = {name: evaluator.evaluate(plan).peak_device_bytes for name, plan in plans.items()}
    assert peak["snapshot"] < peak["resident"]
    tight = best(s, peak["snapshot"])  # the merged copy no longer fits beside the others
    assert tight[f"{REFINER}.strategy"] == "snapshot"


def test_a_sweep_that_would_stream_the_merged_component_is_refused(tmp_path: Path) -> None:
    text = SWEEP + f'[components.{REFINER}]\nstrategies = ["resident", "layerwise"]\n'
    with pytest.raises(InputError, match=f"components.{REFINER}.strategies: layerwise cannot "
                                         f"hold {REFINER}"):
        space(tmp_path, text)
