"""GPU trials: an out-of-memory trial is an infeasible trial, and trials leave nothing behind.

Run on the device machine (`pytest -m gpu`). Wan2.1 1.3B at scale 0.1 (bf16), 2 steps: each
trial is a real run through `CudaBackend` (warm-up plus timed run), as `tune --device cuda`
makes them.
"""

from __future__ import annotations

import gc
import json
import os

import optuna
import pytest
import torch

from resbench.execution import CudaBackend
from resbench.hardware import get_profile
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.residency import LayerwiseConfig, Plan, ResidentConfig
from resbench.resources import sweep_path
from resbench.tune.objective import Evaluator
from resbench.tune.sweep import load_sweep

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODEL = "wan2.1-t2v-1.3b"
SCALE = 0.1
TRIALS = int(os.environ.get("RESBENCH_GPU_TRIALS", "100"))


@pytest.fixture(scope="module")
def backend() -> CudaBackend:
    spec = get_model(MODEL)
    request = Request.for_model(spec, height=256, width=256, frames=9, steps=2)
    b = CudaBackend(spec, request, profile=get_profile("h100-80g"), scale=SCALE)
    b.weights  # noqa: B018 - pin once, outside the measured trials
    yield b
    b.close()


def memory() -> tuple[int, int, int]:
    gc.collect()
    torch.cuda.synchronize()
    return (torch.cuda.memory_allocated(), torch.cuda.memory_reserved(),
            torch.cuda.host_memory_stats().get("allocated_bytes.all.current", 0))


def test_an_oom_trial_is_infeasible_names_the_unit_and_frees_the_card(
        backend: CudaBackend, record_property: object) -> None:
    evaluator = Evaluator(backend.schedule, backend.profile, budget_bytes=200 * 2**20,
                          host_budget_bytes=2**40, backend=backend)
    # a first run that fits settles what a process keeps for good (cuBLAS workspace, ~33 MB)
    backend.run(Plan(name="streamed", components=(("default", LayerwiseConfig()),)), None)
    before = memory()
    ev = evaluator.evaluate(Plan(name="all-resident", components=(("default", ResidentConfig()),)))
    after = memory()
    assert not ev.fits and ev.measured and ev.failed_at
    assert ev.peak_violation_bytes > 0 and ev.user_attrs()["failed_at"] == ev.failed_at
    assert after[:2] == before[:2], f"device memory before {before}, after {after}"
    print(json.dumps({"oom_failed_at": ev.failed_at, "allocated_before": before[0],
                      "allocated_after": after[0], "reserved_before": before[1],
                      "reserved_after": after[1]}))


def test_consecutive_trials_do_not_grow_reserved_or_pinned_memory(backend: CudaBackend) -> None:
    space = load_sweep(sweep_path("wan")).bind(backend.schedule)
    evaluator = Evaluator(backend.schedule, backend.profile, budget_bytes=2 * 10**9,
                          host_budget_bytes=2**40, backend=backend)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    pinned = backend.weights.host.pinned_bytes()
    levels = []
    fits = 0
    for _ in range(TRIALS):
        trial = study.ask()
        ev = evaluator.evaluate(space.suggest(trial))
        fits += ev.fits
        study.tell(trial, ev.latency_s)
        levels.append(memory())
        assert backend.weights.host.pinned_bytes() == pinned
    allocated = {a for a, _, _ in levels}
    reserved = [r for _, r, _ in levels]
    host = [h for _, _, h in levels]
    print(json.dumps({"trials": TRIALS, "fit": fits, "allocated": sorted(allocated),
                      "reserved_first": reserved[0], "reserved_max": max(reserved),
                      "reserved_last": reserved[-1], "caching_host_first": host[0],
                      "caching_host_last": host[-1], "pinned_bytes": pinned}))
    assert fits > 0
    assert len(allocated) == 1
    assert max(reserved) == reserved[0] and max(host) <= host[0]
