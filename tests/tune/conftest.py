"""Fixtures of the tuner tests (constants in tune_setup.py)."""

from __future__ import annotations

import pytest
from tune_setup import MODEL, REQUEST, SCALE, WAN_SWEEP

from resbench.hardware import HardwareProfile, get_profile
from resbench.models.registry import get_model
from resbench.pipeline import Request
from resbench.record import record_schedule
from resbench.schedule import Schedule
from resbench.tune.space import SearchSpace
from resbench.tune.sweep import load_sweep


@pytest.fixture(scope="session")
def schedule() -> Schedule:
    spec = get_model(MODEL)
    return record_schedule(spec, Request.for_model(spec, **REQUEST), scale=SCALE)


@pytest.fixture(scope="session")
def space(schedule: Schedule) -> SearchSpace:
    return load_sweep(WAN_SWEEP).bind(schedule)


@pytest.fixture
def profile() -> HardwareProfile:
    return get_profile("h100-80g")
