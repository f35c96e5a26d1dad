"""Fuzzing the simulator from its inputs: plan documents (every strategy, knobs in and out of
range: group_size 0, resident_blocks past the block count, negative margins, unknown keys),
plans built in Python, random schedules (components, blocks, sizes, uses, working memory)
and random hardware profiles (capacity, bandwidths, engines, rounding, fragmentation).

Each example either stops with a clean error — `InputError` for a bad plan or profile,
`DoesNotFitError` naming the component and the bytes missing — or runs and keeps the
invariants of `test_sim_properties` (budget held at every step, copies that end, compute
after landing, nothing left behind, latency ≥ the lower bound). The strategies and checks
of that module are reused; this one widens what is drawn.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from resbench.drivers.replay import sim_device
from resbench.errors import DoesNotFitError, InputError
from resbench.execution import Execution
from resbench.hardware import HardwareProfile
from resbench.residency import HostOptions, LayerwiseConfig, OffloadConfig, Plan
from resbench.residency.plan import plan_from_dict
from resbench.residency.policies import POLICIES
from resbench.residency.strategies import STRATEGIES
from resbench.schedule import Schedule
from resbench.testing.synthetic import synthetic_schedule
from resbench.trace import Tracer
from tests.residency.test_sim_properties import (
    assert_compute_after_landing,
    call_times,
    configs,
    profile_named,
    schedule_named,
)

MB = 10**6
KINDS = ("text_encoder", "dit", "vae")


# -- schedules ---------------------------------------------------------------------------------
@st.composite
def schedules(draw: st.DrawFn) -> functools.partial[Schedule]:
    """A random request: 1-4 components of 0-6 blocks (and a `rest`), used in 1-4 stages
    (a component may be used in several, and twice in a row), working memory per call."""
    n = draw(st.integers(1, 4))
    names = [f"c{i}" for i in range(n)]
    size = st.integers(1, 8 * MB)
    units = {c: {"rest": draw(size)} | {f"blocks.{b}": draw(size)
                                         for b in range(draw(st.integers(0, 6)))}
             for c in names}
    uses = [(stage, comp, draw(st.integers(1, 3)))  # (stage, component, passes)
            for stage in [f"s{i}" for i in range(draw(st.integers(1, 4)))]
            for comp in draw(st.lists(st.sampled_from(names), min_size=1, max_size=4))]
    pairs = sorted({(stage, comp) for stage, comp, _ in uses})
    return functools.partial(
        random_schedule, units, uses, acts={c: draw(st.integers(0, 2 * MB)) for c in names},
        state_bytes=draw(st.integers(0, 2 * MB)),
        kinds={c: draw(st.sampled_from(KINDS)) for c in names},
        no_prefetch=draw(st.lists(st.sampled_from(pairs), unique=True)))


def random_schedule(units: dict[str, dict[str, int]], uses: list[tuple[str, str, int]], *,
                    acts: dict[str, int], state_bytes: int, kinds: dict[str, str],
                    no_prefetch: list[tuple[str, str]]) -> Schedule:
    calls = [(stage, comp, u) for stage, comp, passes in uses for _ in range(passes)
             for u in units[comp]]
    return synthetic_schedule(units, calls, kinds=kinds, state_bytes=state_bytes,
                              activation_bytes={(c, u): acts[c] for c in units for u in units[c]},
                              no_prefetch=no_prefetch)


def any_schedule() -> st.SearchStrategy[functools.partial[Schedule]]:
    named = st.sampled_from(["wan", "switch"]).map(lambda n: functools.partial(schedule_named, n))
    return st.one_of(named, schedules())


# -- hardware ----------------------------------------------------------------------------------
def either(wild: bool, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
           ) -> st.SearchStrategy[Any]:
    """`valid` values, and `invalid` ones too in a wild example (1 in 4: were every field
    free to be wrong, nearly every example would stop at the first one)."""
    return st.one_of(valid, invalid) if wild else valid


@st.composite
def profile_makers(draw: st.DrawFn) -> functools.partial[HardwareProfile]:
    """A named card with some of capacity, links, engines and overheads redrawn; in a wild
    example some out of range (zero or negative bandwidth, usable fraction > 1,
    fragmentation ≥ 1), which must be refused by name when the profile is built."""
    wild = draw(st.integers(0, 3)) == 0
    base = draw(st.sampled_from(["ideal", "ideal-duplex", "h100-80g"]))
    bandwidth = either(wild, st.floats(1e8, 5e10), st.sampled_from([0.0, -1e9]))
    changes: dict[str, Any] = {
        "memory_capacity_bytes": draw(st.integers(1, 10**11)),
        "usable_fraction": draw(either(wild, st.floats(0.05, 1.0), st.floats(1.01, 1.5))),
        "h2d_pinned_bytes_per_s": draw(bandwidth),
        "h2d_pageable_bytes_per_s": draw(bandwidth),
        "d2h_pinned_bytes_per_s": draw(bandwidth),
        "d2h_pageable_bytes_per_s": draw(bandwidth),
        "transfer_latency_s": draw(st.sampled_from([0.0, 1e-5, 1e-3])),
        "copy_engines": draw(st.integers(1, 3)),
        "duplex_copies": draw(st.booleans()),
        "copy_compute_slowdown": draw(st.sampled_from([0.0, 0.02, 0.5])),
        "allocator_rounding_bytes": draw(st.sampled_from([0, 512, 2 * 2**20])),
        "fragmentation_fraction": draw(either(wild, st.sampled_from([0.0, 0.05, 0.5, 0.99]),
                                              st.sampled_from([1.0, 1.5, -0.1]))),
    }
    keep = draw(st.sets(st.sampled_from(sorted(changes))))
    return functools.partial(make_profile, base, {k: v for k, v in changes.items() if k in keep})


def make_profile(base: str, changes: dict[str, Any]) -> HardwareProfile:
    return dataclasses.replace(profile_named(base), **changes)


# -- plans ---------------------------------------------------------------------------------------
def knobs(wild: bool) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "group_size": either(wild, st.integers(1, 8), st.integers(-1, 0)),
        "prefetch_depth": either(wild, st.integers(0, 5), st.just(-1)),
        # past every block count drawn: valid, the strategy keeps what there is
        "resident_blocks": either(wild, st.integers(0, 10), st.just(-1)),
        "placement": either(wild, st.sampled_from(["prefix", "spaced"]), st.just("middle")),
        "keep_resident": either(wild, st.booleans(), st.just("yes")),
        "prefetch": either(wild, st.booleans(), st.just("yes")),
        "release": either(wild, st.sampled_from(["drop", "d2h"]), st.just("keep")),
    }


@st.composite
def plan_docs(draw: st.DrawFn, components: tuple[str, ...]) -> dict[str, Any]:
    """A plan TOML document as a user might write it; in a wild example with knobs out of
    range, unknown strategies and policies, knobs of another strategy, unknown components."""
    wild = draw(st.integers(0, 3)) == 0
    knob = knobs(wild)
    doc: dict[str, Any] = {"policy": draw(either(wild, st.sampled_from(list(POLICIES)),
                                                 st.just("greedy")))}
    if draw(st.booleans()):
        doc["buffer_margin"] = draw(either(
            wild, st.one_of(st.integers(0, 20 * MB), st.sampled_from(["1MiB", "0"])),
            st.one_of(st.integers(-MB, -1), st.sampled_from(["-1MB", "lots"]))))
    host: dict[str, Any] = {}
    if draw(st.booleans()):
        host["pinned"] = draw(either(wild, st.booleans(), st.just(1)))
    if draw(st.booleans()):
        host["pinned_budget"] = draw(either(
            wild, st.one_of(st.integers(0, 60 * MB), st.sampled_from(["unlimited", "10MB"])),
            st.just(-1)))
    if host:
        doc["host"] = host
    names = (*components, "dit", "text_encoder", "vae", "default")
    keys = draw(st.lists(either(wild, st.sampled_from(names), st.just("nope")), unique=True,
                         max_size=len(components) + 2))
    comps = {}
    for key in keys:
        # layerwise has the most paths: 3 in 6
        strategy = draw(either(wild, st.sampled_from([*STRATEGIES, "layerwise", "layerwise"]),
                               st.just("bogus")))
        table: dict[str, Any] = {"strategy": strategy}
        own = ([f.name for f in dataclasses.fields(STRATEGIES[strategy].Config)]
               if strategy in STRATEGIES else [])
        chosen = draw(st.lists(st.sampled_from(own), unique=True)) if own else []
        stray = draw(either(wild, st.just([]), st.sampled_from([["group_size"], ["release"]])))
        for name in [*chosen, *stray]:
            table[name] = draw(knob[name])
        comps[key] = table
    doc["components"] = comps
    return doc


@st.composite
def direct_plans(draw: st.DrawFn, components: tuple[str, ...]) -> functools.partial[Plan]:
    """Plans built in Python (the API `apply_plan` and the tuner use); in a wild example
    with values out of range, which must be refused like the same values in a TOML file."""
    wild = draw(st.integers(0, 3)) == 0
    knob = knobs(wild)
    cfg = st.one_of(configs, st.builds(LayerwiseConfig, group_size=knob["group_size"],
                                       prefetch_depth=knob["prefetch_depth"],
                                       resident_blocks=knob["resident_blocks"],
                                       placement=knob["placement"],
                                       keep_resident=knob["keep_resident"]),
                    st.builds(OffloadConfig, prefetch=knob["prefetch"], release=knob["release"]))
    keys = draw(st.lists(st.sampled_from((*components, "dit", "default")), unique=True,
                         max_size=len(components) + 1))
    return functools.partial(
        Plan, policy=draw(either(wild, st.sampled_from(list(POLICIES)), st.just("greedy"))),
        buffer_margin_bytes=draw(either(wild, st.integers(0, 20 * MB), st.integers(-MB, -1))),
        host=HostOptions(pinned=draw(st.booleans()), pinned_budget_bytes=draw(either(
            wild, st.sampled_from([None, 0, 10 * MB]), st.just(-1)))),
        components=tuple((k, draw(cfg)) for k in keys))


def plan_makers(components: tuple[str, ...]) -> st.SearchStrategy[functools.partial[Plan]]:
    return st.one_of(plan_docs(components).map(lambda doc: functools.partial(plan_from_dict, doc)),
                     direct_plans(components))


# -- one example -------------------------------------------------------------------------------
def outcome(name: str) -> None:
    if currently_in_test_context():  # `check` also runs the explicit regression cases
        event(name)


def check(schedule: Schedule, make_plan: Callable[[], Plan],
          make_profile: Callable[[], HardwareProfile], fraction: float) -> None:
    """Build the plan and profile (a clean `InputError` is an accepted outcome), run the plan
    under `fraction` × (weights + largest working memory), and check the invariants."""
    try:
        plan = make_plan()
        profile = make_profile()
    except InputError as err:
        outcome("input error")
        assert str(err) and "\n" not in str(err)
        return
    weights = sum(u.weight_bytes for u in schedule.units)
    capacity = int(fraction * (weights + max(c.activation_bytes for c in schedule.calls)))
    times = call_times(schedule, profile)
    try:
        run = Execution(schedule, plan, sim_device(schedule, profile, capacity_bytes=capacity,
                                                   call_times_s=times), tracer=Tracer())
        result = run.run()
    except InputError as err:  # e.g. a component the schedule lacks
        outcome("input error at run")
        assert str(err) and "\n" not in str(err)
        return
    except DoesNotFitError as err:
        outcome("does not fit")
        assert str(err) and err.component and err.missing_bytes > 0
        return
    outcome(f"ran ({plan.policy}{', steady state' if result.steady_state else ''})")
    assert plan_from_dict(plan.to_dict()) == plan  # what runs can be written and read back
    frame = run.manager.tracer.frame()
    assert result.peak_device_bytes <= result.capacity_bytes
    assert frame[frame.kind == "memory"].device_bytes.max() <= result.capacity_bytes
    assert run.manager.leftover_units() == []
    assert result.steady_state == plan.keeps_across_requests
    # the figures are the last request's (the second of two in the steady state)
    starts = (frame.kind == "request_start").to_numpy().nonzero()[0]
    assert len(starts) == (2 if result.steady_state else 1)
    ev = frame.iloc[starts[-1]:] if result.steady_state else frame
    loads = ev[ev.kind == "load"]
    assert (loads.end_s >= loads.t_s).all()
    waits = ev[ev.kind == "wait"]
    assert (waits.end_s >= waits.t_s).all() and (waits.stall_s >= 0).all()
    assert result.h2d_bytes == loads.bytes.sum()
    assert_compute_after_landing(ev)
    moved = loads[loads.stage != "setup"].bytes.sum()
    bandwidth = max(profile.h2d_pinned_bytes_per_s, profile.h2d_pageable_bytes_per_s)
    assert result.latency_s >= max(sum(times), moved / bandwidth) - 1e-9
    assert result.stall_s is not None and result.stall_s >= 0


def fuzz(data: st.DataObject, make_schedule: Callable[[], Schedule], fraction: float) -> None:
    schedule = make_schedule()
    check(schedule, data.draw(plan_makers(schedule.components), label="plan"),
          data.draw(profile_makers(), label="profile"), fraction)


# -- what the fuzzing found ---------------------------------------------------------------------
REGRESSIONS: dict[str, tuple[Callable[[], Plan], str]] = {
    # Plans built in Python skipped the checks `plan_from_dict` makes on a TOML file; the
    # manager then failed with errors that named nothing the user wrote. `Plan` now checks
    # itself (`residency.plan.check_plan`).
    "an unknown policy: KeyError 'greedy' in the manager": (
        lambda: Plan(policy="greedy"), "policy: 'greedy' is not a policy; valid: static"),
    "group_size 0: ValueError from range() in the layerwise strategy": (
        lambda: Plan(components=(("default", LayerwiseConfig(group_size=0)),)),
        "components.default.group_size: must be ≥ 1, got 0"),
    "prefetch_depth -1: KeyError 'te.staging' in the device": (
        lambda: Plan(components=(("default", LayerwiseConfig(prefetch_depth=-1)),)),
        "components.default.prefetch_depth: must be ≥ 0, got -1"),
    "group_size -1: ran, and its plan TOML could not be read back": (
        lambda: Plan(components=(("dit", LayerwiseConfig(group_size=-1)),)),
        "components.dit.group_size: must be ≥ 1, got -1"),
    "a negative margin: ran, and its plan TOML could not be read back": (
        lambda: Plan(policy="dynamic", buffer_margin_bytes=-10 * MB),
        "buffer_margin: must be a whole number of bytes ≥ 0, got -10000000"),
}


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_fuzz_regression(case: str) -> None:
    make_plan, message = REGRESSIONS[case]
    with pytest.raises(InputError) as err:
        make_plan()
    assert str(err.value).startswith("plan 'plan': ") and message in str(err.value)
    check(schedule_named("switch"), make_plan, functools.partial(make_profile, "ideal", {}), 2.0)


FUZZ = given(data=st.data(), make_schedule=any_schedule(),
             fraction=st.one_of(st.floats(1.2, 4.0), st.floats(0.0, 1.2)))


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@FUZZ
def test_fuzz(data: st.DataObject, make_schedule: Callable[[], Schedule],
              fraction: float) -> None:
    fuzz(data, make_schedule, fraction)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@FUZZ
def test_fuzz_long(data: st.DataObject, make_schedule: Callable[[], Schedule],
                   fraction: float) -> None:
    fuzz(data, make_schedule, fraction)
