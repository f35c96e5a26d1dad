"""One log line per trial a worker finished: its own record of what it ran.

Several `resbench tune` workers on one storage each log the trials *they* finished, in the
order they finished them, as they go (a worker killed later has logged all it finished)::

    trial 12 COMPLETE latency_s=3.214 feasible=1 plan=1a2b3c4d5e6f worker=gpu-host:4711

`latency_s` and `feasible` are absent for a trial without values; `plan` is the plan's id
(`objective.plan_id`), `worker` the `host:pid` that ran it (`liveness.worker_id`). Comparing
the workers' logs with the storage finds a trial the storage lost, or one that two workers
both think they ran (`benchmarks/distributed_tune_gpu.py` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import optuna

from resbench.tune.liveness import WORKER_ATTR

_LINE = re.compile(r"^trial (?P<number>\d+) (?P<state>[A-Z]+)(?P<fields>(?: \w+=\S+)*)\s*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialRecord:
    """One parsed line."""

    number: int
    state: str
    """optuna's state name: COMPLETE, FAIL, PRUNED."""
    latency_s: float | None
    feasible: bool | None
    plan: str | None
    worker: str | None


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """The log line of a finished trial (see the module docstring)."""
    parts = [f"trial {trial.number} {trial.state.name}"]
    if trial.values:
        parts.append(f"latency_s={trial.values[0]:.6g}")
        feasible = bool(trial.constraints) and all(v <= 0 for v in trial.constraints.values())
        parts.append(f"feasible={int(feasible)}")
    for key, attr in (("plan", "plan_id"), ("worker", WORKER_ATTR)):
        value = trial.user_attrs.get(attr)
        if value is not None:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def parse_trial_line(line: str) -> TrialRecord | None:
    """The record of a `trial_line`; None for any other line."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    fields = dict(f.split("=", 1) for f in m["fields"].split())
    latency = fields.get("latency_s")
    feasible = fields.get("feasible")
    return TrialRecord(number=int(m["number"]), state=m["state"],
                       latency_s=None if latency is None else float(latency),
                       feasible=None if feasible is None else feasible == "1",
                       plan=fields.get("plan"), worker=fields.get("worker"))


def read_trial_log(text: str) -> list[TrialRecord]:
    """Every trial line in a worker's log, in order; other lines are skipped."""
    return [r for line in text.splitlines() if (r := parse_trial_line(line)) is not None]
