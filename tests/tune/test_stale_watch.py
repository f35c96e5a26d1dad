"""`liveness.StaleWatch`: a dead worker's trial is failed while this worker is mid-trial, not
only when it starts its next one (GPU trials take a minute)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import optuna

from resbench.tune.liveness import WORKER_ATTR, StaleTrials, StaleWatch


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_trial_is_failed_during_this_workers_trial() -> None:
    study = optuna.create_study()
    theirs = study.ask()  # another worker's trial, whose process has died
    study._storage.set_trial_user_attr(theirs._trial_id, WORKER_ATTR,
                                       f"{socket.gethostname()}:{_dead_pid()}")
    lines: list[str] = []
    with StaleWatch(study, StaleTrials(log=lines.append), every_s=0.02):
        deadline = time.monotonic() + 5
        while (study.trials[theirs.number].state == optuna.trial.TrialState.RUNNING
               and time.monotonic() < deadline):
            time.sleep(0.01)  # "this worker's long trial"
    assert study.trials[theirs.number].state == optuna.trial.TrialState.FAIL
    assert len(lines) == 1 and "is gone" in lines[0]


def test_the_watch_stops_with_its_block_and_survives_a_failing_sweep() -> None:
    calls: list[float] = []

    class Flaky(StaleTrials):
        def sweep(self, study: optuna.Study, *, skip: frozenset[int] = frozenset()) -> list[int]:
            calls.append(time.monotonic())
            raise RuntimeError("storage hiccup")

    with StaleWatch(optuna.create_study(), Flaky(), every_s=0.01):
        time.sleep(0.1)
    n = len(calls)
    time.sleep(0.05)
    assert n >= 2 and len(calls) == n
