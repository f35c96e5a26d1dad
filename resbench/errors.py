"""Errors that reach the user, each with the exit code the CLI returns for it.

Exit codes (also in README and the CLI epilog):

* 0 — success
* 1 — unexpected internal error (a bug: please report it)
* 2 — bad input: unknown model, bad size string, bad plan TOML, missing GPU for `calibrate`
* 3 — does not fit: the plan (or every plan) needs more device memory than the budget,
  or the real device ran out of memory running it
* 4 — `compare --fail-on` found a regression
* 130 — interrupted (Ctrl-C); finished work is kept
"""

from __future__ import annotations


class ResbenchError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code = 1


class InputError(ResbenchError, ValueError):
    """The user asked for something that does not exist or is malformed."""

    exit_code = 2


class DoesNotFitError(ResbenchError):
    """A plan needs more device memory than the budget allows.

    `component`/`unit` name what was being placed, `missing_bytes` how much did not fit,
    `min_budget_bytes` the smallest budget any plan could run in (when known).
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        component: str | None = None,
        unit: str | None = None,
        missing_bytes: int = 0,
        min_budget_bytes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.component = component
        self.unit = unit
        self.missing_bytes = missing_bytes
        self.min_budget_bytes = min_budget_bytes


class DeviceOOMError(DoesNotFitError):
    """The real device ran out of memory; memory has been freed before this is raised.

    Same exit code as `DoesNotFitError` (3): the plan does not fit this card's budget."""
