"""The GPU distributed-tuning launcher's checks (`benchmarks/dt_checks.py`) and its report
(`benchmarks/distributed_tune_gpu_report.py`), on studies and summaries built by hand (worker
processes would spend ~30 s each importing torch and recording a schedule; the launcher
itself ran with `--tiny` on the CPU, see benchmarks/results/distributed_tune_gpu.md)."""

from __future__ import annotations

import json
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from benchmarks import dt_checks
from benchmarks.distributed_tune_gpu import parse, parse_phase
from benchmarks.distributed_tune_gpu_report import feasible_in_window
from benchmarks.distributed_tune_gpu_report import main as report_main
from benchmarks.dt_workers import worker_command
from resbench.tune.trial_log import read_trial_log, trial_line

TrialState = optuna.trial.TrialState
T0 = datetime(2026, 11, 30, 3, 0, 0)


def _trial(number: int, worker: str, *, start_s: float, end_s: float | None, latency: float = 2.0,
           fits: bool = True, state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    done = state == TrialState.COMPLETE
    t = optuna.trial.create_trial(
        state=state, value=latency if done else None, params={"policy": "static"},
        distributions={"policy": CategoricalDistribution(["static", "dynamic"])},
        constraints={"peak_device": -1.0 if fits else 1.0} if done else None,
        user_attrs={"worker": worker, "plan_id": f"p{number}"})
    t.number = number
    t._trial_id = number
    t.datetime_start = T0 + timedelta(seconds=start_s)
    t.datetime_complete = None if end_s is None else T0 + timedelta(seconds=end_s)
    return t


def _run() -> tuple[list[optuna.trial.FrozenTrial], dict[str, list]]:
    """Two workers; b was killed in trial 3 (FAIL, unlogged) after logging trial 1."""
    trials = [_trial(0, "h:1", start_s=0, end_s=5, latency=3.0),
              _trial(1, "h:2", start_s=1, end_s=6, latency=2.5),
              _trial(2, "h:1", start_s=5, end_s=9, latency=1.0, fits=False),
              _trial(3, "h:2", start_s=6, end_s=140, state=TrialState.FAIL),
              _trial(4, "h:1", start_s=9, end_s=14, latency=2.0)]
    logs = {w: read_trial_log("\n".join(trial_line(t) for t in trials
                                        if t.user_attrs["worker"] == w and t.number != 3))
            for w in ("h:1", "h:2")}
    return trials, logs


def test_a_clean_run_with_a_killed_worker_has_no_duplicates_and_nothing_lost() -> None:
    trials, logs = _run()
    check = dt_checks.reconcile(trials, logs, cut_workers=["h:2"])
    assert check["cut_short"] == [3] and check["unaccounted"] == [] and check["lost"] == []
    assert dt_checks.duplicates(check) == 0 and dt_checks.lost(check) == 0
    assert check["logged_per_worker"] == {"h:1": 3, "h:2": 1} and check["running"] == []


def test_the_checks_catch_a_lost_a_doubled_and_an_unlogged_trial() -> None:
    trials, logs = _run()
    # the study lost trial 4; trial 0 is logged by both workers; trial 3 nobody cut short
    check = dt_checks.reconcile([t for t in trials if t.number != 4],
                                {**logs, "h:2": [*logs["h:2"], logs["h:1"][0]]})
    assert check["lost"] == [0, 4]  # 4 is gone; 0 is stored as h:1's, not h:2's
    assert check["logged_twice"] == [0]
    assert check["unaccounted"] == [3]  # h:2 was not cut, so its unlogged FAIL counts
    assert dt_checks.duplicates(check) == 1 and dt_checks.lost(check) == 3


def test_window_counts_trials_and_the_best_feasible_latency_within_it() -> None:
    trials, _ = _run()
    w = dt_checks.window(trials, 10.0)
    assert (w["finished"], w["complete"]) == (3, 3)  # trials 0, 1, 2 end by t0 + 10 s
    assert w["trials_per_min"] == 18.0
    assert w["best_latency_s"] == 2.5  # trial 2 is faster but does not fit
    assert w["best_latency_s_all"] == 2.0 and w["per_worker"] == {"h:1": 2, "h:2": 1}
    # each worker from its own first trial: h:1 (from 0 s) trials 0 and 2, h:2 (from 1 s) 1
    assert w["per_worker_own"] == {"h:1": 2, "h:2": 1} and w["trials_per_min_own"] == 18.0
    assert w["feasible_own"] == 2 and w["busy_s_own"] == 14.0  # trials 0 and 1 fit; 5 + 4 + 5 s
    assert dt_checks.window(trials, 14.0)["per_worker_own"] == {"h:1": 3, "h:2": 1}
    assert dt_checks.first_start(trials, "h:2") == (T0 + timedelta(seconds=1)).timestamp()


def test_workers_share_the_study_and_budget_with_their_own_seed(tmp_path: Path) -> None:
    args = parse([str(tmp_path), "--campaign", "b", "--pg-dist", str(tmp_path)])
    assert args.phases == ["journal@0,1", "postgresql@1+journal@0"]
    cmds = [worker_command(args, "x.log", "st", i, 70.0, tmp_path) for i in range(2)]
    assert len({c[c.index("--seed") + 1] for c in cmds}) == 2
    for c in cmds:
        assert c[c.index("--device") + 1] == "cuda" and c[c.index("--budget") + 1] == "24GB"
        assert c[c.index("--study-name") + 1] == "st" and c[-6:] == ["--height", "512",
                                                                       "--width", "512",
                                                                       "--steps", "2"]


def test_a_phase_runs_groups_side_by_side_never_two_workers_on_one_gpu() -> None:
    assert parse_phase("postgresql@0+journal@1") == [("postgresql", ["0"]), ("journal", ["1"])]
    assert parse_phase("journal@0,1") == [("journal", ["0", "1"])]
    for bad in ("postgresql@0+journal@0", "journal@0,0", "redis@0", "journal"):
        with pytest.raises(SystemExit):
            parse_phase(bad)


def test_report_rows_from_a_summary(tmp_path: Path, capsys) -> None:
    trials, logs = _run()
    check = dt_checks.reconcile(trials, logs, cut_workers=["h:2"])
    phase = {"storage": "postgresql", "workers": 2, "gpus": ["0", "1"], "interrupted": None,
             "gpus_shared": False, "phase": 1, "phase_spec": "postgresql@0,1",
             "study": "dt-postgresql-2w-p1", "exit_codes": [130, -9], "startup_s": [40.0, 42.0],
             "startup_marks_s": [{"budget": 9.0, "searching": 39.5}, {}],
             "window": dt_checks.window(trials, 10.0), "check": check, "duplicates": 0,
             "lost": 0, "kill": {"worker": 1, "trials": [3], "states_after": ["FAIL"],
                                 "ended_after_s": 18.4, "by": "survivor's sweep (pid gone)"},
             "host_memory": {"per_worker_peak_bytes": [{"VmRSS": 40 * 2**30}, {"VmRSS": 2**31}],
                             "phase_workers": 2, "host_used_before_bytes": 3 * 2**30,
                             "host_used_peak_bytes": 90 * 2**30},
             "commands": ["CUDA_VISIBLE_DEVICES=0 python -m resbench tune ..."]}
    one = {**phase, "workers": 1, "gpus": ["0"], "kill": None, "exit_codes": [0], "phase": 0,
           "phase_spec": "postgresql@0+journal@1", "startup_marks_s": [],
           "window": {**phase["window"], "trials_per_min_own": 9.0}}
    doc = {"storage": "postgresql", "phases": [one, phase], "postgres": "PostgreSQL 16.2",
           "gpu": {"gpus": [{"name": "NVIDIA H200"}] * 2, "driver": "580"},
           "machine": {"date": "2026-11-30 05:45 UTC", "cores": 32, "cpu": "x",
                       "versions": {"optuna": "5.0.0"}}}
    (tmp_path / "summary.json").write_text(json.dumps({"schema": 2, "storages": [doc]}))
    assert report_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("| 2 | 0,1 (nvidia-smi: one worker per GPU) | postgresql (phase 1) "
            "| 18.0 (3; 2 feasible; 14 s in trials) | 2.500 "
            "| 0 | 0 | 0 | trial 3: FAIL, 18 s after the kill, by survivor's sweep (pid gone); "
            "survivor exit 130 | 40, 42 | 40.0 + 2.0 | 3.0 -> 90.0 (2 workers) "
            "| NVIDIA H200 |") in out
    assert "| 1 | 0 | postgresql (phase 0, beside journal@1) | 9.0 (3; 2 feasible; 14 s" in out
    assert "9.0 -> 18.0 trials/min with 1 -> 2 workers (2.00x; 1 worker: one study)" in out
    assert "dt-postgresql-2w-p1 worker 0: budget 9, searching 39.5; first trial 40 s" in out


def test_older_summaries_count_feasible_trials_from_the_worker_logs_beside_them(
        tmp_path: Path) -> None:
    """Summaries written before the launcher counted feasible trials: the report takes each
    worker's first `per_worker_own` log lines (those inside its window) from logs.tgz."""
    trials, logs = _run()
    window = {k: v for k, v in dt_checks.window(trials, 10.0).items()
              if k not in ("feasible_own", "busy_s_own")}
    phase = {"storage": "journal", "workers": 2, "phase": 0, "worker_ids": ["h:1", "h:2"],
             "window": window}
    folder = tmp_path / "dt" / "p0-journal-2w"
    folder.mkdir(parents=True)
    for i, w in enumerate(("h:1", "h:2")):
        (folder / f"worker-{i}.log").write_text(
            "\n".join(trial_line(t) for t in trials if t.user_attrs["worker"] == w
                      and t.number != 3) + "\n")
    with tarfile.open(tmp_path / "logs.tgz", "w:gz") as tar:
        tar.add(tmp_path / "dt", arcname="dt")
    # h:1's window holds trials 0 (fits) and 2 (does not); h:2's trial 1 (fits)
    assert feasible_in_window({"_dir": tmp_path}, phase) == 2
    assert feasible_in_window({"_dir": tmp_path / "elsewhere"}, phase) is None
