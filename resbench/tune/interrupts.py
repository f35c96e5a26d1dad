"""Ctrl-C during `study.optimize`, taken where it leaves the study consistent.

A KeyboardInterrupt raised at an arbitrary point of optuna's trial loop can cut a storage
write in half, leave the trial RUNNING (an interrupt while optuna tells the result: optuna 5
then even loses the KeyboardInterrupt, replaced by an UnboundLocalError from its clean-up)
or print optuna's warning with the interrupt's traceback. So, while `Interrupts.held` is
active (main thread only; elsewhere Python delivers no signals anyway):

* a SIGINT while a trial is being scored (`Interrupts.scoring`, the simulator or the GPU
  run: no storage writes) raises KeyboardInterrupt there at once; optuna marks the trial
  FAIL and re-raises, and its warning about that trial is dropped;
* a SIGINT anywhere else (optuna creating a trial, suggesting parameters, the objective
  writing attributes, telling a result, callbacks) is held: the study stops after the trial
  in hand, a trial that has not been scored yet fails at `scoring` (KeyboardInterrupt), and
  `pending` tells the caller that the run was interrupted;
* a second SIGINT while one is held raises at once (the user insists).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import optuna

_OPTIMIZE_LOGGER = "optuna.study._optimize"  # where optuna logs "Trial N failed ..."


class Interrupts:
    """See the module docstring. `pending`: a SIGINT arrived and was held."""

    def __init__(self) -> None:
        self.pending = False
        self._scoring = False
        self._study: optuna.Study | None = None

    @contextlib.contextmanager
    def held(self, study: optuna.Study) -> Iterator[None]:
        """Hold SIGINTs (as above) around `study.optimize`."""
        quiet = _DropInterruptedTrialLogs()
        logger = logging.getLogger(_OPTIMIZE_LOGGER)
        logger.addFilter(quiet)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if main else None
        self._study = study
        try:
            yield
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
            logger.removeFilter(quiet)
            self._study = None

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """Scoring a trial: interruptible at once. Raises KeyboardInterrupt on entry if an
        interrupt is pending."""
        if self.pending:
            raise KeyboardInterrupt
        self._scoring = True
        try:
            yield
        finally:
            self._scoring = False

    def _on_sigint(self, _signum: int, _frame: FrameType | None) -> None:
        if self._scoring or self.pending:
            raise KeyboardInterrupt
        self.pending = True
        if self._study is not None:
            # after the trial in hand; RuntimeError: optimize has just returned
            with contextlib.suppress(RuntimeError):
                self._study.stop()


class _DropInterruptedTrialLogs(logging.Filter):
    """Drops optuna's two warnings about a trial failed by KeyboardInterrupt ("Trial N failed
    with parameters ... because of ... KeyboardInterrupt()" with its traceback, then "Trial
    N failed with value None."): the CLI reports the interrupt in one line."""

    def __init__(self) -> None:
        super().__init__()
        self._trials: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        trial = message.partition(" failed")[0]  # "Trial 12"
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self._trials.add(trial)
            return False
        return not (trial in self._trials and message.startswith(f"{trial} failed with value"))
