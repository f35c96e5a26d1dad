"""Two `tune` processes on one storage share one study (SQLite file, journal file)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import optuna
import pytest
from tune_setup import make_options

from resbench.schedule import Schedule
from resbench.tune import tune
from resbench.tune.runner import _settled_trials


def _worker(storage: str, folder: str, n: int, seed: int, schedule: Schedule) -> None:
    # no suppression: a worker that ends first waits for the other's running trials
    # (`runner._settled_trials`) instead of declaring that no plan fits
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


def test_a_worker_that_ends_first_waits_for_the_others_running_trials(tmp_path: Path) -> None:
    """Regression: a worker exited 3 ("no plan fits") while another worker's feasible trial
    was still running. `_settled_trials` must return only once that trial has finished, and
    include it."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="race")
    theirs = study.ask()  # another worker's trial, RUNNING

    def finish() -> None:
        time.sleep(0.6)
        study.tell(theirs, 1.25)

    threading.Thread(target=finish).start()
    lines: list[str] = []
    t0 = time.perf_counter()
    settled = _settled_trials(study, ran=[], log=lines.append, poll_s=0.05)
    assert time.perf_counter() - t0 >= 0.5
    assert [t.number for t in settled] == [theirs.number] and settled[0].values == [1.25]
    assert lines == ["waiting for 1 trial(s) other workers are running"]


def test_a_worker_does_not_wait_for_its_own_trials(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="own")
    mine = study.ask()
    assert _settled_trials(study, ran=[mine.number], log=lambda _: None) == []
