"""The distributed-tuning launcher's read-back (`benchmarks/distributed_tune.py`), in process.

Two real workers on one storage are covered by tests/tune/test_workers.py; here, the checks
the launcher reports on a study built by hand (no worker processes: each would spend ~10 s
importing torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import optuna
from optuna.distributions import CategoricalDistribution

from benchmarks.distributed_tune import (
    RunSummary,
    StudyCheck,
    check_study,
    public_url,
    storage_kind,
    table_row,
    worker_command,
)

TrialState = optuna.trial.TrialState
POLICY = {"policy": CategoricalDistribution(["static", "dynamic"])}


def _trial(policy: str, latency: float, *, fits: bool = True,
           state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    done = state == TrialState.COMPLETE
    return optuna.trial.create_trial(
        state=state, value=latency if done else None, params={"policy": policy},
        distributions=POLICY,
        constraints={"peak_device": -1.0 if fits else 5.0, "pinned_host": -1.0} if done else None)


def _study() -> optuna.Study:
    study = optuna.create_study(study_name="s")
    for t in (_trial("static", 9.0),                      # before the run
              _trial("dynamic", 7.0),
              _trial("static", 8.0),                      # repeats trial 0's parameters
              _trial("dynamic", 1.0, fits=False),         # fastest, but does not fit
              _trial("static", 0.0, state=TrialState.FAIL),
              _trial("static", 0.0, state=TrialState.PRUNED)):
        study.add_trial(t)
    return study


def test_check_study_counts_states_repeats_and_the_best_feasible_latency() -> None:
    check = check_study(_study(), trials_before=1)
    assert (check.complete, check.fail, check.pruned, check.running) == (4, 1, 1, 0)
    assert check.added == 5
    assert check.repeated_params == 2  # trial 2 repeats 0, trial 3 repeats 1
    assert check.feasible == 3
    assert check.best_latency_s == 7.0
    assert (check.duplicate_numbers, check.duplicate_ids) == (0, 0)


def test_check_study_finds_a_trial_stored_twice() -> None:
    trials = _study().get_trials()
    fake = SimpleNamespace(study_name="s", get_trials=lambda deepcopy=False: [*trials, trials[1]])
    check = check_study(fake)  # type: ignore[arg-type]
    assert check.duplicate_numbers == 2
    assert check.duplicate_ids == 2


def _summary(per_worker: tuple[int | None, ...], added: int) -> RunSummary:
    study = StudyCheck(study_name="s", complete=added, fail=0, pruned=0, running=0, added=added,
                       duplicate_numbers=0, duplicate_ids=0, repeated_params=0, feasible=added,
                       best_latency_s=1.5, search_s=30.0)
    return RunSummary(workers=len(per_worker), storage="x.log", storage_kind="journal",
                      device="sim", study=study, trials_per_worker=per_worker,
                      exit_codes=(0,) * len(per_worker), interrupted=False, wall_s=60.0,
                      cpu_s=12.0, load_before=(0.0, 0.0, 0.0), load_after=(0.0, 0.0, 0.0),
                      commands=(), machine={})


def test_lost_compares_the_workers_counts_with_the_study() -> None:
    assert _summary((3, 2), 5).lost == 0
    assert _summary((3, 2), 4).lost == 1
    assert _summary((3, None), 3).lost is None
    row = table_row(_summary((3, 2), 5).to_dict())
    assert "| 3 + 2 |" in row and "| 0 / 0 |" in row and "| 5 | 10 |" in row  # 5/min, 10/min


def test_storage_kind_and_password_hidden() -> None:
    url = "postgresql+psycopg2://resbench:secret@db:5432/resbench"
    assert storage_kind(url) == "postgresql"
    assert "secret" not in public_url(url) and "db:5432/resbench" in public_url(url)
    assert storage_kind("sqlite:///x.db") == "sqlite"
    assert storage_kind("runs/x.log") == "journal"
    assert public_url("runs/x.log") == "runs/x.log"


def test_every_worker_shares_the_storage_with_its_own_seed(tmp_path: Path) -> None:
    args = argparse.Namespace(model="wan2.2", budget="48GB", storage="s.log", device="sim",
                              scale=1.0, n_trials=5, timeout=None, study_name="st", seed=3)
    cmds = [worker_command(args, i, ["--height", "480"], tmp_path) for i in range(3)]
    seeds = {c[c.index("--seed") + 1] for c in cmds}
    assert len(seeds) == 3
    assert all(c[c.index("--storage") + 1] == "s.log" and c[-2:] == ["--height", "480"]
               for c in cmds)
    assert len({c[c.index("--out") + 1] for c in cmds}) == 3


def test_lost_counts_only_this_runs_workers_when_trials_name_their_worker() -> None:
    study = optuna.create_study(study_name="w")
    for worker in ("a:1", "a:2", "b:9"):  # b:9: another host's worker on the same study
        trial = _trial("static", 1.0)
        trial.set_user_attr("worker", worker)
        study.add_trial(trial)
    check = check_study(study, workers={"a:1", "a:2"})
    assert (check.added, check.added_by_workers) == (3, 2)
    summary = _summary((1, 1), 3)
    assert RunSummary(**{**{f: getattr(summary, f) for f in summary.__slots__},
                         "study": check}).lost == 0
