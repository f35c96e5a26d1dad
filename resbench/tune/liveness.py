"""Which process runs a trial, and ending the trials of processes that died.

A `resbench tune` killed mid-trial (SIGKILL, the OOM killer, a lost node) leaves its trial
RUNNING: nothing in the storage would ever finish it, a resumed study would carry it for
ever, and a worker waiting for other workers' trials (`runner._settled_trials`) would wait
for it for ever. Every trial records its worker, ``host:pid`` (`worker_id`), in the user
attribute ``worker`` as the objective's first step, and three rules end abandoned trials:

* **This host** (every storage, the journal file included): a RUNNING trial whose worker is
  on this host and whose process no longer exists is failed at once (`StaleTrials.sweep`,
  run when a study is resumed and while a worker waits for others).
* **Other hosts** (SQLite and PostgreSQL): optuna's heartbeat. `study.open_storage` builds
  RDB storages with `HEARTBEAT_INTERVAL_S` and `HEARTBEAT_GRACE_S`; a trial whose heartbeat
  stopped for the grace period is failed by `optuna.storages.fail_stale_trials`, which
  optuna calls when a worker starts a trial and `sweep` calls too; `StaleWatch` sweeps every
  heartbeat interval while a worker's own trial runs, so long trials do not delay it. The grace is long because a live trial failed by mistake makes its
  worker crash when it reports the result.
* **Unclaimed** trials: optuna creates a trial RUNNING a few milliseconds before the
  objective writes its worker; a process killed in that gap leaves a RUNNING trial with no
  worker. `sweep` fails one that it has seen unclaimed for `UNCLAIMED_GRACE_S` (clock of
  this process, so clocks of other hosts do not matter).

Limits: optuna 5's journal storage has no heartbeat, so on a journal file shared by several
hosts (NFS) a trial of a dead worker on *another* host stays RUNNING, and a worker waiting
for it says so; use PostgreSQL (or SQLite on one host) there. A pid reused by a new process
on the same host looks alive until that process ends; two containers that share a host
name but not a pid namespace must not share a journal file. Trials written by clients that
do not record a ``worker`` at the start (plain optuna ask-and-tell, resbench before this
rule) are failed as unclaimed once they have run for `UNCLAIMED_GRACE_S`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from types import TracebackType

import optuna
from optuna.trial import TrialState

HEARTBEAT_INTERVAL_S = 20
"""Seconds between a running trial's heartbeats (RDB storages)."""
HEARTBEAT_GRACE_S = 120
"""Seconds without a heartbeat after which a RUNNING trial is failed (RDB storages)."""
UNCLAIMED_GRACE_S = 60.0
"""Seconds a RUNNING trial may stay without a worker before it is failed."""
WORKER_ATTR = "worker"


def worker_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str) -> bool | None:
    """Whether the process `worker` (``host:pid``) exists: True or False on this host, None
    (cannot tell) for another host, a malformed value, or a system without POSIX signals."""
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or os.name != "posix":
        return None
    try:
        os.kill(int(pid_text), 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def fail_trial(study: optuna.Study, number: int) -> bool:
    """Mark the RUNNING trial `number` FAIL; False if it had finished meanwhile (its worker
    told it, or another worker failed it first)."""
    try:
        study.tell(number, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # "Cannot tell a ... trial"
        return False
    return True


class StaleTrials:
    """Fails the RUNNING trials of dead workers (see the module docstring); one per run, so
    that it remembers since when it has seen each unclaimed trial."""

    def __init__(self, *, log: Callable[[str], None] = lambda _line: None,
                 unclaimed_grace_s: float = UNCLAIMED_GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.unclaimed_grace_s = unclaimed_grace_s
        self.clock = clock
        self._unclaimed_since: dict[int, float] = {}

    def sweep(self, study: optuna.Study, *, skip: frozenset[int] = frozenset()) -> list[int]:
        """Fail what can be known dead now; returns the numbers of the trials failed. `skip`:
        trials of this process (alive by definition)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # no-op without a heartbeat
        failed = []
        now = self.clock()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in running:
            if t.number in skip:
                continue
            worker = t.user_attrs.get(WORKER_ATTR)
            if worker is None:
                since = self._unclaimed_since.setdefault(t.number, now)
                if now - since < self.unclaimed_grace_s:
                    continue
                why = f"no worker claimed it for {self.unclaimed_grace_s:g} s"
            elif worker_alive(str(worker)) is False:
                why = f"its worker {worker} is gone"
            else:
                continue
            if fail_trial(study, t.number):
                failed.append(t.number)
                self.log(f"trial {t.number} was left RUNNING ({why}): marked FAIL")
        still = {t.number for t in running}
        self._unclaimed_since = {n: s for n, s in self._unclaimed_since.items() if n in still}
        return failed


class StaleWatch:
    """Sweeps (`StaleTrials.sweep`) every `every_s` seconds in a daemon thread while this
    worker runs its trials (a context manager around `study.optimize`).

    optuna checks heartbeats only when a worker starts a trial, so with GPU trials of a
    minute a dead worker's trial outlived the grace by up to a trial (measured on 2 H200s:
    still RUNNING 134 s after a kill with ~40 s trials); swept every heartbeat interval, it
    ends FAIL at most one interval after the grace. A failing sweep (a storage hiccup) is
    skipped: the next one, or the next trial's own check, tries again."""

    def __init__(self, study: optuna.Study, stale: StaleTrials, *,
                 every_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.study, self.stale, self.every_s = study, stale, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resbench-stale-watch",
                                        daemon=True)

    def __enter__(self) -> StaleWatch:
        self._thread.start()
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            with contextlib.suppress(Exception):
                self.stale.sweep(self.study)


def fail_own_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials this process claimed: after an interrupt that landed outside
    the objective (while optuna was telling the result), nobody else would."""
    me = worker_id()
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(WORKER_ATTR) == me and fail_trial(study, t.number)]
