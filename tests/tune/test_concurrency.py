"""Four `resbench tune` processes on one journal file, and on one SQLite file, share one study:
every worker ends with exit code 0 (none declares "no plan fits" while another's feasible
trial runs), the study holds exactly the trials the workers ran, numbered once each, and
the shipped presets each worker queued were run inside those trials.

Each worker is a process forked from this one that runs the command line through the entry
point, `resbench.cli.main`: its own pid, storage connection, recording and trials, without
an interpreter start-up and imports (~7 s of CPU a worker on 2 cores) that are not under
test here; test_kills runs the command in fresh interpreters."""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import socket
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tune_setup import MODEL, REQUEST_ARGS, TINY_SWEEP

from resbench.cli import main
from resbench.tune.study import open_storage

HOST = socket.gethostname()
QUEUED = {"diffusers-group-offload", "frugal"}
"""What each worker queues at this scale and budget: the shipped presets that fit and that
the tiny sweep can express, and the sweep's most frugal plan. A worker queues one unless a
trial with its parameters exists, so workers starting together may each queue it."""
N_TRIALS = (4, 3, 2, 2)
"""Each at least len(QUEUED): a worker that starts after the others have finished queues
both plans and must run both itself, or one is left WAITING."""


def command(tmp_path: Path, storage: str, index: int, n_trials: int) -> list[str]:
    return ["tune", "--model", MODEL, "--scale", "0.05",
            *REQUEST_ARGS, "--sweep", str(TINY_SWEEP), "--hardware", "h100-80g",
            "--budget", "50MB", "--seed", str(index * 1000), "--no-report", "--json",
            "--storage", storage, "--study-name", "shared", "--n-trials", str(n_trials),
            "--out", str(tmp_path / f"plan-{index}.toml")]


def worker(argv: list[str], folder: Path, index: int) -> None:
    """`resbench ARGV` in `folder`, stdout and stderr to files there; main's SystemExit is
    this process's exit code."""
    os.chdir(folder)
    with open(f"out-{index}.txt", "w") as out, open(f"err-{index}.txt", "w") as err:
        sys.stdout, sys.stderr = out, err
        main(argv)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_four_workers_on_one_storage(tmp_path: Path, kind: str) -> None:
    storage = str(tmp_path / ("shared.log" if kind == "journal" else "shared.db"))
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=worker, args=(command(tmp_path, storage, i, n), tmp_path, i))
             for i, n in enumerate(N_TRIALS)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=540)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    results = [((tmp_path / f"out-{i}.txt").read_text(), (tmp_path / f"err-{i}.txt").read_text())
               for i in range(len(procs))]
    assert [p.exitcode for p in procs] == [0] * len(procs), [err for _, err in results]
    assert [json.loads(out)["trials_run"] for out, _ in results] == list(N_TRIALS)

    trials = optuna.load_study(study_name="shared", storage=open_storage(storage)).trials
    assert [t.number for t in trials] == list(range(sum(N_TRIALS)))  # none twice, none lost
    assert {t.state for t in trials} == {TrialState.COMPLETE}  # none left waiting or running
    per_worker = collections.Counter(t.user_attrs["worker"] for t in trials)
    assert per_worker == {f"{HOST}:{p.pid}": n for p, n in zip(procs, N_TRIALS, strict=True)}
    queued = collections.Counter(t.user_attrs["preset"] for t in trials
                                 if "preset" in t.user_attrs)
    assert set(queued) == QUEUED and all(1 <= n <= len(procs) for n in queued.values())
