"""Invariants of simulated runs, over random plans, budgets and cards (hypothesis), and the
simulator against the CPU device: the same manager must make the same decisions.

The lower bound checked on every run that fits:

    latency ≥ max(Σ call times, B / bw) − 1 ns

* Σ call times: the cost model's seconds of every unit call of the request (the compute
  stream runs them one after another; slowdown beside copies only adds);
* B: the bytes the run copied host→device *during the request* (its `load` events after
  setup: what this plan had to move), bw: the card's fastest H2D bandwidth. Copies share
  one link, start no earlier than the request and land before the compute that waits on
  them, so they fit inside the request.
"""

from __future__ import annotations

import functools

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resbench.cost import CostModel
from resbench.drivers.replay import sim_device
from resbench.errors import DoesNotFitError
from resbench.execution import Execution
from resbench.hardware import HardwareProfile, get_profile
from resbench.residency import (
    DisabledConfig,
    HostOptions,
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidentConfig,
)
from resbench.residency.strategies import StrategyConfig
from resbench.schedule import Schedule
from resbench.testing.synthetic import ideal_profile, synthetic_schedule
from resbench.trace import Tracer
from tests.residency.helpers import managed_run, tiny_schedule

MB = 10**6
WAN = "wan2.2-t2v-a14b"


@functools.cache
def switch_schedule() -> Schedule:
    """Wan2.2-like: encoder, high-noise expert (2 steps x 2 passes), low-noise expert (2 x 2),
    the low-noise expert again in a refine stage right after (two uses of one component in a
    row), VAE. Activations take working memory."""
    def blocks(n: int, nbytes: int) -> dict[str, int]:
        return {"rest": nbytes // 4} | {f"blocks.{i}": nbytes for i in range(n)}

    units = {"te": blocks(2, 3 * MB), "hi": blocks(4, 4 * MB), "lo": blocks(4, 4 * MB),
             "vae": blocks(2, 2 * MB)}

    def passes(comp: str, stage: str, n: int) -> list[tuple[str, str, str]]:
        return [(stage, comp, u) for _ in range(n) for u in units[comp]]

    calls = (passes("te", "encode", 1) + passes("hi", "denoise", 4) + passes("lo", "denoise", 4)
             + passes("lo", "refine", 1) + passes("vae", "decode", 1))
    acts = {(c, u): MB for c in units for u in units[c] if u != "rest"}
    return synthetic_schedule(units, calls, activation_bytes=acts, state_bytes=MB,
                              kinds={"te": "text_encoder", "vae": "vae"})


def schedule_named(name: str) -> Schedule:
    return tiny_schedule(WAN) if name == "wan" else switch_schedule()


def call_times(schedule: Schedule, profile: HardwareProfile) -> list[float]:
    if schedule.model == "synthetic":  # FLOPs are 0 there: 1 ms a block, 0.2 ms a rest
        return [2e-4 if c.unit == "rest" else 1e-3 for c in schedule.calls]
    return CostModel(profile).call_times(schedule.calls)


layerwise = st.builds(LayerwiseConfig, group_size=st.integers(1, 5),
                      prefetch_depth=st.integers(0, 3), resident_blocks=st.integers(0, 3),
                      placement=st.sampled_from(["prefix", "spaced"]))
configs: st.SearchStrategy[StrategyConfig] = st.one_of(  # layerwise has the most paths: 3 in 6
    st.just(ResidentConfig()),
    st.just(DisabledConfig()),
    st.builds(OffloadConfig, prefetch=st.booleans(), release=st.sampled_from(["drop", "d2h"])),
    layerwise, layerwise, layerwise,
)


@st.composite
def plans(draw: st.DrawFn, components: tuple[str, ...]) -> Plan:
    keys = draw(st.lists(st.sampled_from((*components, "dit", "default")), unique=True,
                         max_size=len(components) + 2))
    budget = draw(st.sampled_from([None, 0, 10 * MB, 60 * MB]))
    return Plan(policy=draw(st.sampled_from(["static", "dynamic", "disabled"])),
                buffer_margin_bytes=draw(st.sampled_from([0, MB, 20 * MB])),
                host=HostOptions(pinned=draw(st.booleans()), pinned_budget_bytes=budget),
                components=tuple((k, draw(configs)) for k in keys))


profiles = st.sampled_from(["ideal", "ideal-duplex", "h100-80g"])


def profile_named(name: str) -> HardwareProfile:
    if name == "h100-80g":
        return get_profile(name)
    return ideal_profile(copy_engines=2 if name == "ideal-duplex" else 1,
                         duplex=name == "ideal-duplex", slowdown=0.02)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.sampled_from(["wan", "switch"]), card=profiles,
       fraction=st.floats(0.3, 2.5))
def test_random_plans_keep_the_simulator_invariants(data: st.DataObject, which: str, card: str,
                                                    fraction: float) -> None:
    schedule = schedule_named(which)
    plan = data.draw(plans(schedule.components))
    profile = profile_named(card)
    weights = sum(u.weight_bytes for u in schedule.units)
    capacity = int(fraction * (weights + max(c.activation_bytes for c in schedule.calls)))
    times = call_times(schedule, profile)
    driver = Execution(schedule, plan, sim_device(schedule, profile, capacity_bytes=capacity,
                                                  call_times_s=times), tracer=Tracer())
    try:
        result = driver.run()
    except DoesNotFitError as err:  # the only way a plan may fail
        event("does not fit")
        assert err.missing_bytes is not None and err.missing_bytes > 0
        assert err.component
        return
    event(f"fits ({plan.policy})")
    ev = driver.manager.tracer.frame()

    # memory: the budget holds at every step, and nothing is left behind
    assert result.peak_device_bytes <= result.capacity_bytes
    assert ev[ev.kind == "memory"].device_bytes.max() <= result.capacity_bytes
    assert driver.manager.leftover_units() == []

    # transfers: spans are ordered, the byte count is the events', compute never runs on
    # weights that have not landed
    loads = ev[ev.kind == "load"]
    assert (loads.end_s >= loads.t_s).all()
    waits = ev[ev.kind == "wait"]
    assert (waits.end_s >= waits.t_s).all() and (waits.stall_s >= 0).all()
    assert result.h2d_bytes == loads.bytes.sum()
    assert result.d2h_bytes == ev[ev.kind == "d2h"].bytes.sum()
    assert_compute_after_landing(ev)

    # the lower bound
    moved = loads[loads.stage != "setup"].bytes.sum()
    bandwidth = max(profile.h2d_pinned_bytes_per_s, profile.h2d_pageable_bytes_per_s)
    bound = max(sum(times), moved / bandwidth)
    assert result.latency_s >= bound - 1e-9
    assert result.stall_s >= 0


def assert_compute_after_landing(ev: pd.DataFrame) -> None:
    landed: dict[tuple[str, str], float] = {}
    for row in ev[ev.kind.isin(["load", "compute"])].itertuples():
        key = (row.component, row.unit)
        if row.kind == "load":
            landed[key] = row.end_s
        elif key in landed:
            assert row.t_s >= landed[key] - 1e-12, f"{key} computed at {row.t_s}, landed later"


# -- the simulator makes the CPU device's decisions ------------------------------------------
COUNTED = ("prepare", "prefetch", "prefetch_skip", "load", "wait", "compute", "keep", "release",
           "evict", "d2h")
SAME_DECISIONS = {
    "offload-static": Plan(components=(("default", OffloadConfig()),)),
    "offload-d2h-no-prefetch": Plan(policy="dynamic",
                                    components=(("default", OffloadConfig(prefetch=False,
                                                                          release="d2h")),)),
    "layerwise-static": Plan(components=(("default", LayerwiseConfig(prefetch_depth=2)),)),
    "mixed-dynamic": Plan(policy="dynamic", buffer_margin_bytes=MB, components=(
        ("text_encoder", LayerwiseConfig(group_size=2, prefetch_depth=1, resident_blocks=1)),
        ("dit", LayerwiseConfig(group_size=4, prefetch_depth=2, resident_blocks=3,
                                placement="spaced")),
        ("vae", ResidentConfig()))),
}


@pytest.mark.parametrize("name", list(SAME_DECISIONS))
def test_simulator_and_cpu_device_emit_the_same_events(name: str) -> None:
    plan = SAME_DECISIONS[name]
    _, cpu_manager, _ = managed_run(WAN, plan)
    schedule = tiny_schedule(WAN)
    profile = ideal_profile()  # no rounding or fragmentation: the CPU ledger's bytes
    sim = Execution(schedule, plan, sim_device(
        schedule, profile, call_times_s=CostModel(profile).call_times(schedule.calls)),
        tracer=Tracer())
    sim.run()

    def counts(ev: pd.DataFrame) -> dict[tuple[str, str], int]:
        ev = ev[ev.kind.isin(COUNTED)]
        return ev.groupby(["kind", "component"]).size().to_dict()

    assert counts(sim.manager.tracer.frame()) == counts(cpu_manager.tracer.frame())
    assert sim.manager.leftover_units() == cpu_manager.leftover_units() == []
