"""Fixtures: the synthetic run of `helpers`, simulated once per session."""

from __future__ import annotations

import pytest

from resbench.hardware import get_profile
from tests.report.helpers import CAPACITY, simulate_synthetic, synthetic_plan


@pytest.fixture(scope="session")
def sim_run():
    return simulate_synthetic()


@pytest.fixture(scope="session")
def frame(sim_run):
    return sim_run[2].frame()


@pytest.fixture(scope="session")
def saved_run(sim_run, tmp_path_factory):
    """The synthetic run saved with `save_run` (CSV events, fixed creation time)."""
    from resbench.run import save_run

    schedule, result, tracer = sim_run
    path = tmp_path_factory.mktemp("runs") / "synthetic"
    save_run(path, events=tracer, plan=synthetic_plan(), profile=get_profile("h100-80g"),
             model=schedule.model, request=schedule.request, result=result,
             capacity_bytes=CAPACITY, schedule=schedule, created="2026-01-01T00:00:00+00:00")
    return path
