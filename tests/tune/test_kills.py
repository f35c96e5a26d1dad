"""A `resbench tune` killed or interrupted mid-trial: nothing finished is lost, the trial cut
short ends FAIL (never RUNNING for ever), and the same command resumes the study.

The subprocess tests run the real command on Wan2.1 1.3B at full size (recorded on meta
tensors, simulated) with 1,000 steps, so that a trial takes ~0.3 s: the test waits until a
trial is being scored (its worker recorded, no result yet) and kills the process then. The
same command line then resumes the study through `resbench.cli.main` in this process: what
is under test is the study it finds, not a second interpreter's start-up (~10 s on 2 cores).
The other tests drive `resbench.tune.liveness` and `resbench.tune.interrupts` directly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tune_setup import MODEL, TINY_SWEEP

from resbench.tune.interrupts import Interrupts
from resbench.tune.liveness import (
    HEARTBEAT_GRACE_S,
    HEARTBEAT_INTERVAL_S,
    StaleTrials,
    fail_own_trials,
    worker_alive,
    worker_id,
)
from resbench.tune.runner import _settled_trials
from resbench.tune.study import open_storage

HOST = socket.gethostname()
SLOW_REQUEST = ["--height", "128", "--width", "128", "--frames", "5", "--steps", "1000"]
"""~62,000 unit calls: 0.2-0.6 s a trial, long enough to be caught mid-trial."""
BUDGET = "6GB"
"""The text encoder (11.4 GB) cannot be resident; the smallest budget any plan fits is 2.7 GB."""


def storage_for(tmp_path: Path, kind: str) -> str:
    return str(tmp_path / ("study.log" if kind == "journal" else "study.db"))


def tune_command(tmp_path: Path, storage: str, n_trials: int) -> list[str]:
    return [sys.executable, "-m", "resbench", "tune", "--model", MODEL, *SLOW_REQUEST,
            "--sweep", str(TINY_SWEEP), "--hardware", "h100-80g", "--budget", BUDGET,
            "--seed", "0", "--no-report", "--storage", storage, "--study-name", "kills",
            "--presets", str(tmp_path / "no-presets"), "--out", str(tmp_path / "plan.toml"),
            "--n-trials", str(n_trials)]


def start(tmp_path: Path, storage: str, n_trials: int, log: str) -> subprocess.Popen[bytes]:
    with open(tmp_path / log, "wb") as err:
        return subprocess.Popen(tune_command(tmp_path, storage, n_trials), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err)


def run_again(tmp_path: Path, storage: str, n_trials: int, run_main: Callable[..., tuple[int, str, str]],
              monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """The same command line, run by the entry point in this process from the same folder:
    (exit code, stderr)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(*tune_command(tmp_path, storage, n_trials)[3:])  # after `-m resbench`
    return code, err


def load(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="kills", storage=open_storage(storage))


def states(storage: str) -> dict[int, TrialState]:
    return {t.number: t.state for t in load(storage).get_trials(deepcopy=False)}


def wait_mid_trial(storage: str, proc: subprocess.Popen[bytes], log: Path) -> int:
    """The number of a trial `proc` is scoring now, once one of its trials is complete."""
    me = f"{HOST}:{proc.pid}"
    study = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if study is None:
            try:
                study = load(storage)
            except KeyError:  # not created yet
                time.sleep(0.1)
                continue
        trials = study.get_trials(deepcopy=False)
        scoring = [t.number for t in trials if t.state == TrialState.RUNNING
                   and t.user_attrs.get("worker") == me and "plan_toml" not in t.user_attrs]
        if scoring and any(t.state == TrialState.COMPLETE for t in trials):
            return scoring[0]
        time.sleep(0.01)
    raise AssertionError(f"no trial in flight within 240 s:\n{log.read_text()}")


def count(st: dict[int, TrialState], state: TrialState) -> int:
    return sum(s == state for s in st.values())


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_sigkill_mid_trial_then_the_same_command_resumes(
        tmp_path: Path, kind: str, run_main: Callable[..., tuple[int, str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    storage = storage_for(tmp_path, kind)
    proc = start(tmp_path, storage, 200, "first.log")
    in_flight = wait_mid_trial(storage, proc, tmp_path / "first.log")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    before = states(storage)
    assert before[in_flight] == TrialState.RUNNING  # nothing could mark it: the process is gone
    assert count(before, TrialState.RUNNING) == 1
    complete_before = {n for n, s in before.items() if s == TrialState.COMPLETE}
    assert complete_before

    code, again_err = run_again(tmp_path, storage, 1, run_main, monkeypatch)
    assert code == 0, again_err
    after = states(storage)
    assert after[in_flight] == TrialState.FAIL
    assert count(after, TrialState.RUNNING) == 0
    assert complete_before <= {n for n, s in after.items() if s == TrialState.COMPLETE}
    assert count(after, TrialState.COMPLETE) == len(complete_before) + 1
    assert (f"trial {in_flight} was left RUNNING (its worker {HOST}:{proc.pid} is gone): "
            f"marked FAIL") in again_err


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_sigint_mid_trial_exits_130_with_the_counts_then_resumes(
        tmp_path: Path, kind: str, run_main: Callable[..., tuple[int, str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    storage = storage_for(tmp_path, kind)
    proc = start(tmp_path, storage, 200, "first.log")
    in_flight = wait_mid_trial(storage, proc, tmp_path / "first.log")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = (tmp_path / "first.log").read_text()
    before = states(storage)
    assert before[in_flight] == TrialState.FAIL
    assert count(before, TrialState.RUNNING) == 0
    complete, failed = count(before, TrialState.COMPLETE), count(before, TrialState.FAIL)
    assert complete >= 1 and failed == 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().splitlines()[-1].startswith(
        f"interrupted: study kills keeps its {complete} complete and {failed} failed trials "
        f"in {storage}; run the same command again to resume")

    code, again_err = run_again(tmp_path, storage, 1, run_main, monkeypatch)
    assert code == 0, again_err
    after = states(storage)
    assert count(after, TrialState.COMPLETE) == complete + 1
    assert count(after, TrialState.FAIL) == 1 and count(after, TrialState.RUNNING) == 0


# -- liveness, in process ---------------------------------------------------------------------
def dead_pid() -> int:
    """The pid of a child process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def study_in(tmp_path: Path, kind: str) -> optuna.Study:
    storage = open_storage(storage_for(tmp_path, kind))
    return optuna.create_study(study_name="live", storage=storage)


def running_trial(study: optuna.Study, worker: str | None) -> int:
    with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": fine
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    if worker is not None:
        trial.set_user_attr("worker", worker)
    return trial.number


def test_worker_alive_knows_this_host_only() -> None:
    assert worker_id() == f"{HOST}:{os.getpid()}"
    assert worker_alive(worker_id()) is True
    assert worker_alive(f"{HOST}:{dead_pid()}") is False
    assert worker_alive(f"not-{HOST}:1") is None
    assert worker_alive("garbage") is None


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_sweep_fails_only_the_trials_of_dead_workers_on_this_host(tmp_path: Path,
                                                                  kind: str) -> None:
    study = study_in(tmp_path, kind)
    dead = running_trial(study, f"{HOST}:{dead_pid()}")
    alive = running_trial(study, worker_id())
    remote = running_trial(study, f"not-{HOST}:{os.getpid()}")
    done = running_trial(study, f"{HOST}:{dead_pid()}")
    study.tell(done, 1.0)
    lines: list[str] = []
    assert StaleTrials(log=lines.append).sweep(study) == [dead]
    st = {t.number: t.state for t in study.trials}
    assert st == {dead: TrialState.FAIL, alive: TrialState.RUNNING,
                  remote: TrialState.RUNNING, done: TrialState.COMPLETE}
    assert len(lines) == 1 and lines[0].startswith(f"trial {dead} was left RUNNING")
    assert StaleTrials().sweep(study) == []  # idempotent


def test_an_unclaimed_trial_fails_after_the_grace_period(tmp_path: Path) -> None:
    study = study_in(tmp_path, "journal")
    orphan = running_trial(study, None)  # its process died before the objective started
    now = [100.0]
    stale = StaleTrials(unclaimed_grace_s=60.0, clock=lambda: now[0])
    assert stale.sweep(study) == []
    now[0] += 59.0
    assert stale.sweep(study) == []
    now[0] += 1.0
    assert stale.sweep(study) == [orphan]
    assert study.trials[orphan].state == TrialState.FAIL


def test_rdb_storages_have_a_heartbeat_that_fails_remote_dead_workers(tmp_path: Path) -> None:
    storage = open_storage(storage_for(tmp_path, "sqlite"))
    assert storage.get_heartbeat_interval() == HEARTBEAT_INTERVAL_S
    assert storage.grace_period == HEARTBEAT_GRACE_S
    # the same mechanism with a 1 s grace: a remote worker (pid unknowable) stops beating
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        quick = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'quick.db'}",
                                           heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="beat", storage=quick)
    remote = running_trial(study, f"not-{HOST}:1")
    quick.record_heartbeat(study.trials[remote]._trial_id)
    assert StaleTrials().sweep(study) == []  # heartbeat fresh, pid unknowable
    time.sleep(2.2)
    StaleTrials().sweep(study)
    assert study.trials[remote].state == TrialState.FAIL


def test_a_waiting_worker_does_not_wait_for_a_dead_workers_trial(tmp_path: Path) -> None:
    """Regression: on a journal file (no heartbeat) `_settled_trials` waited for ever for
    the RUNNING trial of a worker that had been killed."""
    study = study_in(tmp_path, "journal")
    dead = running_trial(study, f"{HOST}:{dead_pid()}")
    lines: list[str] = []
    t0 = time.perf_counter()
    assert _settled_trials(study, ran=[], log=lines.append, poll_s=0.05) == []
    assert time.perf_counter() - t0 < 5
    assert study.trials[dead].state == TrialState.FAIL
    assert lines and "marked FAIL" in lines[0]


def test_fail_own_trials_fails_this_process_running_trials_only(tmp_path: Path) -> None:
    study = study_in(tmp_path, "journal")
    mine = running_trial(study, worker_id())
    theirs = running_trial(study, f"not-{HOST}:1")
    assert fail_own_trials(study) == [mine]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert theirs == 1


# -- interrupts, in process -------------------------------------------------------------------
def test_a_sigint_before_scoring_is_held_until_scoring_begins(tmp_path: Path) -> None:
    study = study_in(tmp_path, "journal")
    interrupts = Interrupts()
    handler = signal.getsignal(signal.SIGINT)
    scored: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 1:
            signal.raise_signal(signal.SIGINT)  # lands while writing attributes: held
        trial.set_user_attr("written", True)
        with interrupts.scoring():
            scored.append(trial.number)
        return 1.0

    with pytest.raises(KeyboardInterrupt), interrupts.held(study):
        study.optimize(objective, n_trials=10)
    assert scored == [0]
    assert [(t.state, t.user_attrs) for t in study.trials] == [
        (TrialState.COMPLETE, {"written": True}), (TrialState.FAIL, {"written": True})]
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_sigint_after_scoring_lets_the_trial_finish_and_stops_the_study(
        tmp_path: Path) -> None:
    study = study_in(tmp_path, "journal")
    interrupts = Interrupts()

    def objective(trial: optuna.Trial) -> float:
        with interrupts.scoring():
            pass
        if trial.number == 1:
            signal.raise_signal(signal.SIGINT)  # lands while recording the result: held
        trial.set_user_attr("recorded", True)
        return 1.0

    with interrupts.held(study):
        study.optimize(objective, n_trials=10)
    assert interrupts.pending
    assert [(t.state, t.user_attrs) for t in study.trials] == [
        (TrialState.COMPLETE, {"recorded": True})] * 2


def test_a_sigint_while_scoring_fails_the_trial_without_optunas_traceback(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    study = study_in(tmp_path, "journal")
    interrupts = Interrupts()

    def objective(trial: optuna.Trial) -> float:
        with interrupts.scoring():
            if trial.number == 2:
                signal.raise_signal(signal.SIGINT)
        return 1.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with pytest.raises(KeyboardInterrupt), interrupts.held(study):
        study.optimize(objective, n_trials=10)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Trial 2 failed" not in err


def test_a_second_sigint_while_one_is_held_raises_at_once(tmp_path: Path) -> None:
    study = study_in(tmp_path, "journal")
    interrupts = Interrupts()
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), interrupts.held(study):
        signal.raise_signal(signal.SIGINT)
        assert interrupts.pending
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is handler
