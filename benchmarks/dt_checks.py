"""What a distributed-tuning run's study and its workers' logs say, checked against each other.

Pure functions over optuna `FrozenTrial`s and the workers' trial lines
(`resbench.tune.trial_log`), so that the launcher (`distributed_tune_gpu.py`) and the tests
share them:

* `reconcile`: duplicates (a trial number or id stored twice; a trial two workers both
  logged), lost trials (logged by a worker, but the study lacks it or holds it in another
  state, plan, latency or worker), trials nobody logged (only a trial cut short by a kill or
  a Ctrl-C may be such: `cut_short`; any other is `unaccounted`), and trials left RUNNING.
* `window`: trials finished and the best feasible latency reached within the first
  `window_s` seconds after the study's first trial started, so runs with 1 and 2 workers
  are compared after equal wall time; and the trials each worker finished within `window_s`
  of its own first trial (`trials_per_min_own`: their sum per minute, so that a worker that
  started up a few seconds later is not counted short), how many of them were feasible and
  how long they took (`busy_s_own`: with trials of 1 to 30 s, the count alone says little).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna

from resbench.tune.liveness import WORKER_ATTR
from resbench.tune.trial_log import TrialRecord

TrialState = optuna.trial.TrialState
FrozenTrial = optuna.trial.FrozenTrial


def feasible(t: FrozenTrial) -> bool:
    return (t.state == TrialState.COMPLETE and bool(t.constraints)
            and all(v <= 0 for v in t.constraints.values()))


def _same(t: FrozenTrial, worker: str, r: TrialRecord) -> bool:
    """Whether the stored trial is what `worker` logged."""
    if t.state.name != r.state or t.user_attrs.get(WORKER_ATTR) != worker:
        return False
    if r.plan is not None and t.user_attrs.get("plan_id") != r.plan:
        return False
    if r.latency_s is not None:
        return bool(t.values) and math.isclose(t.values[0], r.latency_s, rel_tol=1e-5)
    return True


def reconcile(trials: Sequence[FrozenTrial], logs: Mapping[str, Sequence[TrialRecord]],
              cut_workers: Iterable[str] = ()) -> dict[str, Any]:
    """Check the study's `trials` against `logs` (worker id -> its trial lines).
    `cut_workers`: workers killed or interrupted, whose trial in flight ends FAIL unlogged."""
    cut = set(cut_workers)
    numbers = Counter(t.number for t in trials)
    ids = Counter(t._trial_id for t in trials)
    stored = {t.number: t for t in trials}
    logged = Counter(r.number for recs in logs.values() for r in recs)
    lost = sorted({r.number for w, recs in logs.items() for r in recs
                   if r.number not in stored or not _same(stored[r.number], w, r)})
    unlogged = [t for t in trials if t.state.is_finished() and not logged[t.number]]
    cut_short = sorted(t.number for t in unlogged
                       if t.state == TrialState.FAIL and t.user_attrs.get(WORKER_ATTR) in cut)
    seen: set[tuple[tuple[str, Any], ...]] = set()
    repeated = 0
    for t in sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number):
        key = tuple(sorted(t.params.items()))
        repeated += key in seen
        seen.add(key)
    return {
        "trials": len(trials),
        "states": dict(sorted(Counter(t.state.name for t in trials).items())),
        "logged": sum(logged.values()),
        "logged_per_worker": {w: len(recs) for w, recs in logs.items()},
        "duplicate_numbers": sum(n for n in numbers.values() if n > 1),
        "duplicate_ids": sum(n for n in ids.values() if n > 1),
        "logged_twice": sorted(n for n, k in logged.items() if k > 1),
        "lost": lost,
        "cut_short": cut_short,
        "unaccounted": sorted(t.number for t in unlogged if t.number not in cut_short),
        "running": sorted(t.number for t in trials if t.state == TrialState.RUNNING),
        "repeated_params": repeated,
    }


def duplicates(check: Mapping[str, Any]) -> int:
    """Everything stored or logged twice."""
    return (check["duplicate_numbers"] + check["duplicate_ids"]
            + len(check["logged_twice"]))


def lost(check: Mapping[str, Any]) -> int:
    """Trials a worker ran that the study does not hold as it ran them, or that nobody ran."""
    return len(check["lost"]) + len(check["unaccounted"])


def window(trials: Sequence[FrozenTrial], window_s: float) -> dict[str, Any]:
    """Trials finished and the best feasible latency within `window_s` of the first start."""
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    if not starts:
        return {"window_s": window_s, "t0": None, "finished": 0, "complete": 0,
                "trials_per_min": 0.0, "best_latency_s": None, "best_latency_s_all": None,
                "per_worker": {}, "per_worker_own": {}, "trials_per_min_own": 0.0,
                "feasible_own": 0, "busy_s_own": 0.0}
    t0 = min(starts)
    done = [t for t in trials if t.state.is_finished() and t.datetime_complete]
    inside = [t for t in done if t.datetime_complete.timestamp() <= t0 + window_s]
    fits = [t.values[0] for t in inside if feasible(t)]
    fits_all = [t.values[0] for t in done if feasible(t)]
    per_worker = Counter(str(t.user_attrs.get(WORKER_ATTR)) for t in inside)
    own: Counter[str] = Counter()
    mine: list[FrozenTrial] = []  # each worker's trials finished within its own window
    for w in {str(t.user_attrs.get(WORKER_ATTR)) for t in trials if t.datetime_start}:
        first = first_start(trials, w) if w != "None" else None
        if first is not None:
            got = [t for t in done if str(t.user_attrs.get(WORKER_ATTR)) == w
                   and t.datetime_complete.timestamp() <= first + window_s]
            own[w] = len(got)
            mine += got
    return {"window_s": window_s, "t0": t0, "finished": len(inside),
            "complete": sum(t.state == TrialState.COMPLETE for t in inside),
            "trials_per_min": len(inside) / window_s * 60,
            "best_latency_s": min(fits, default=None),
            "best_latency_s_all": min(fits_all, default=None),
            "per_worker": dict(per_worker), "per_worker_own": dict(own),
            "trials_per_min_own": sum(own.values()) / window_s * 60,
            # plans measured feasible, and seconds spent in trials (all workers together)
            "feasible_own": sum(feasible(t) for t in mine),
            "busy_s_own": sum((t.datetime_complete - t.datetime_start).total_seconds()
                              for t in mine if t.datetime_start)}


def first_start(trials: Sequence[FrozenTrial], worker: str) -> float | None:
    """When `worker`'s first trial started (epoch seconds; trial times are this host's)."""
    starts = [t.datetime_start.timestamp() for t in trials
              if t.datetime_start and t.user_attrs.get(WORKER_ATTR) == worker]
    return min(starts, default=None)
