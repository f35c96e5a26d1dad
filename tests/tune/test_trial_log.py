"""One log line per finished trial (`resbench.tune.trial_log`), and `tune --json` writing them."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from resbench.tune.trial_log import parse_trial_line, read_trial_log, trial_line

TrialState = optuna.trial.TrialState


def _trial(state: TrialState, value: float | None, fits: bool = True, **attrs: str
           ) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(
        state=state, value=value, params={"policy": "static"},
        distributions={"policy": CategoricalDistribution(["static", "dynamic"])},
        constraints=None if value is None else {"peak_device": -1.0 if fits else 2.0},
        user_attrs=attrs)
    t.number = 7
    return t


def test_a_line_round_trips_state_latency_feasibility_plan_and_worker() -> None:
    t = _trial(TrialState.COMPLETE, 3.2141234, fits=False, plan_id="1a2b3c", worker="gpu-a:42")
    line = trial_line(t)
    assert line == "trial 7 COMPLETE latency_s=3.21412 feasible=0 plan=1a2b3c worker=gpu-a:42"
    r = parse_trial_line(line)
    assert r is not None
    assert (r.number, r.state, r.feasible, r.plan, r.worker) == (7, "COMPLETE", False, "1a2b3c",
                                                                 "gpu-a:42")
    assert r.latency_s == 3.21412


def test_a_failed_trial_has_no_latency_and_other_lines_are_skipped() -> None:
    line = trial_line(_trial(TrialState.FAIL, None, worker="h:1"))
    assert line == "trial 7 FAIL worker=h:1"
    text = f"study x in y (0 trials so far)\n{line}\ntrial 3 was left RUNNING (its worker ...)\n"
    records = read_trial_log(text)
    assert [(r.number, r.state, r.latency_s, r.feasible) for r in records] == [(7, "FAIL", None,
                                                                                 None)]
