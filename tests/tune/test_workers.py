"""Two `tune` processes on one storage share one study (SQLite file, journal file)."""

from __future__ import annotations

import contextlib
import multiprocessing
from pathlib import Path

import optuna
import pytest
from tune_setup import make_options

from resbench.schedule import Schedule
from resbench.tune import tune
from resbench.tune.runner import NoFeasiblePlanError


def _worker(storage: str, folder: str, n: int, seed: int, schedule: Schedule) -> None:
    # NoFeasiblePlanError is a race, not a bookkeeping failure: the other worker may still be
    # running the one plan that fits when this one ends; its trials are stored either way.
    with contextlib.suppress(NoFeasiblePlanError):
        tune(make_options(Path(folder), storage=storage, n_trials=n, seed=seed), schedule=schedule)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_finish_n1_plus_n2_trials(tmp_path: Path, schedule: Schedule,
                                              kind: str) -> None:
    storage = (f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite"
               else str(tmp_path / "shared.log"))
    n1, n2 = 7, 5
    # fork: the children inherit the imported modules and the recorded schedule
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(storage, str(tmp_path), n, seed, schedule))
             for n, seed in ((n1, 1), (n2, 2))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    if kind == "sqlite":
        study = optuna.load_study(study_name="test", storage=storage)
    else:
        journal = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage))
        study = optuna.load_study(study_name="test", storage=journal)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == n1 + n2
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    # each worker queues the frugal plan unless it finds it queued already; two starting at
    # the same moment may both queue it, never more
    assert 1 <= sum(t.user_attrs.get("preset") == "frugal" for t in complete) <= 2
