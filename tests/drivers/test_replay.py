"""The replay driver and simulator: event timelines worked out by hand.

Every case runs a synthetic schedule on the ideal card of `resbench.testing.synthetic` (one
copy engine at 1e9 B/s: a 1 MB unit copies in 1 ms; no latency, rounding, fragmentation or
slowdown), with call times given in ms, so each expected time below is a sum of the inputs.
Rows are (kind, component, unit, start ms, end ms); a wait's end is when compute resumed.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from resbench.drivers.replay import sim_device, simulate
from resbench.errors import DoesNotFitError
from resbench.execution import Execution, RunResult
from resbench.residency import (
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

MB = 10**6
MS = 1e-3
KINDS = ("load", "wait", "compute", "release", "d2h")

Row = tuple[str, str, str, float, float | None]


def two_stage(**kw: object) -> tuple[Schedule, list[float]]:
    """A 1 MB text encoder (2 ms), then a DiT: 1 MB rest (0.5 ms), two 2 MB blocks (3 ms)."""
    schedule = synthetic_schedule(
        {"te": {"rest": MB}, "dit": {"rest": MB, "blocks.0": 2 * MB, "blocks.1": 2 * MB}},
        [("encode", "te", "rest"), ("denoise", "dit", "rest"), ("denoise", "dit", "blocks.0"),
         ("denoise", "dit", "blocks.1")],
        kinds={"te": "text_encoder"}, **kw)  # type: ignore[arg-type]
    return schedule, [2 * MS, 0.5 * MS, 3 * MS, 3 * MS]


def three_blocks() -> tuple[Schedule, list[float]]:
    """One DiT: 1 MB rest (0.5 ms), three 2 MB blocks (3 ms each)."""
    units = {"rest": MB, "blocks.0": 2 * MB, "blocks.1": 2 * MB, "blocks.2": 2 * MB}
    schedule = synthetic_schedule({"dit": units}, [("denoise", "dit", u) for u in units])
    return schedule, [0.5 * MS] + [3 * MS] * 3


def run(schedule: Schedule, times: list[float], plan: Plan,
        capacity_bytes: int | None = None) -> tuple[RunResult, pd.DataFrame, Execution]:
    device = sim_device(schedule, ideal_profile(), capacity_bytes=capacity_bytes,
                        call_times_s=times)
    run = Execution(schedule, plan, device, tracer=Tracer())
    result = run.run()
    return result, run.manager.tracer.frame(), run


def rows(frame: pd.DataFrame, kinds: tuple[str, ...] = KINDS) -> list[Row]:
    out = []
    for r in frame[frame.kind.isin(kinds)].itertuples():
        end = None if pd.isna(r.end_s) else round(r.end_s / MS, 9)
        out.append((r.kind, r.component, r.unit, round(r.t_s / MS, 9), end))
    return out


def plan(cfg: StrategyConfig, policy: str = "static", **kw: object) -> Plan:
    return Plan(policy=policy, components=(("default", cfg),), **kw)  # type: ignore[arg-type]


def test_offload_static_prefetches_the_next_use_when_the_last_one_releases() -> None:
    result, frame, _ = run(*two_stage(), plan(OffloadConfig()))
    assert rows(frame) == [
        ("load", "te", "rest", 0.0, 1.0),  # cold: demand load
        ("wait", "te", "rest", 0.0, 1.0),
        ("compute", "te", "rest", 1.0, 3.0),
        ("release", "te", "rest", 3.0, None),
        ("load", "dit", "rest", 3.0, 4.0),  # prefetched at the encoder's release
        ("load", "dit", "blocks.0", 4.0, 6.0),
        ("load", "dit", "blocks.1", 6.0, 8.0),
        ("wait", "dit", "rest", 3.0, 4.0),
        ("compute", "dit", "rest", 4.0, 4.5),
        ("wait", "dit", "blocks.0", 4.5, 6.0),
        ("compute", "dit", "blocks.0", 6.0, 9.0),
        ("wait", "dit", "blocks.1", 9.0, 9.0),  # landed at 8 ms: no stall
        ("compute", "dit", "blocks.1", 9.0, 12.0),
        ("release", "dit", "rest", 12.0, None),
        ("release", "dit", "blocks.0", 12.0, None),
        ("release", "dit", "blocks.1", 12.0, None),
    ]
    prepares = frame[frame.kind == "prepare"]
    assert list(prepares.reason) == ["cold", "prefetched"]
    assert result.latency_s == pytest.approx(12 * MS)
    assert result.compute_s == pytest.approx(8.5 * MS)
    assert result.stall_s == pytest.approx(3.5 * MS)
    assert result.h2d_bytes == 6 * MB
    assert result.peak_device_bytes == 5 * MB


def test_dynamic_prefetches_during_the_previous_use() -> None:
    result, frame, _ = run(*two_stage(), plan(OffloadConfig(), policy="dynamic"))
    assert rows(frame) == [
        ("load", "te", "rest", 0.0, 1.0),
        ("load", "dit", "rest", 1.0, 2.0),  # early: queued behind the encoder on the engine
        ("load", "dit", "blocks.0", 2.0, 4.0),
        ("load", "dit", "blocks.1", 4.0, 6.0),
        ("wait", "te", "rest", 0.0, 1.0),
        ("compute", "te", "rest", 1.0, 3.0),  # overlaps the DiT's copies
        ("release", "te", "rest", 3.0, None),  # never used again: not kept
        ("wait", "dit", "rest", 3.0, 3.0),
        ("compute", "dit", "rest", 3.0, 3.5),
        ("wait", "dit", "blocks.0", 3.5, 4.0),
        ("compute", "dit", "blocks.0", 4.0, 7.0),
        ("wait", "dit", "blocks.1", 7.0, 7.0),
        ("compute", "dit", "blocks.1", 7.0, 10.0),
        ("release", "dit", "rest", 10.0, None),
        ("release", "dit", "blocks.0", 10.0, None),
        ("release", "dit", "blocks.1", 10.0, None),
    ]
    assert result.latency_s == pytest.approx(10 * MS)
    assert result.peak_device_bytes == 6 * MB  # both components at once


def test_offload_without_prefetch_loads_at_the_use() -> None:
    result, frame, _ = run(*two_stage(), plan(OffloadConfig(prefetch=False)))
    loads = rows(frame, ("load",))
    assert loads[1:] == [("load", "dit", "rest", 3.0, 4.0), ("load", "dit", "blocks.0", 4.0, 6.0),
                         ("load", "dit", "blocks.1", 6.0, 8.0)]
    skips = frame[frame.kind == "prefetch_skip"]
    assert list(zip(skips.component, skips.reason, strict=True)) == [("dit", "prefetch off")]
    assert list(frame[frame.kind == "prepare"].reason) == ["cold", "cold"]
    assert result.latency_s == pytest.approx(12 * MS)


def test_a_stage_that_forbids_prefetch_is_loaded_cold() -> None:
    _, frame, _ = run(*two_stage(no_prefetch=[("denoise", "dit")]),
                      plan(OffloadConfig(), policy="dynamic"))
    skips = frame[frame.kind == "prefetch_skip"]
    assert list(zip(skips.component, skips.reason, strict=True)) == [("dit", "stage disallows")]
    assert rows(frame, ("load",))[1] == ("load", "dit", "rest", 3.0, 4.0)


def test_layerwise_streams_one_block_ahead() -> None:
    result, frame, _ = run(*three_blocks(), plan(LayerwiseConfig(group_size=1, prefetch_depth=1)))
    assert rows(frame) == [
        ("load", "dit", "rest", 0.0, 1.0),
        ("wait", "dit", "rest", 0.0, 1.0),
        ("compute", "dit", "rest", 1.0, 1.5),
        ("load", "dit", "blocks.0", 1.5, 3.5),  # demand: nothing was ahead of it
        ("wait", "dit", "blocks.0", 1.5, 3.5),
        ("load", "dit", "blocks.1", 3.5, 5.5),  # prefetch overlaps block 0's compute
        ("compute", "dit", "blocks.0", 3.5, 6.5),
        ("release", "dit", "blocks.0", 6.5, None),
        ("wait", "dit", "blocks.1", 6.5, 6.5),
        ("load", "dit", "blocks.2", 6.5, 8.5),  # issued when block 1 starts
        ("compute", "dit", "blocks.1", 6.5, 9.5),
        ("release", "dit", "blocks.1", 9.5, None),
        ("wait", "dit", "blocks.2", 9.5, 9.5),
        ("compute", "dit", "blocks.2", 9.5, 12.5),
        ("release", "dit", "blocks.2", 12.5, None),
        ("release", "dit", "rest", 12.5, None),
    ]
    prefetched = frame[frame.kind == "load"].set_index("unit").reason.to_dict()
    assert prefetched == {"rest": "demand", "blocks.0": "demand", "blocks.1": "prefetch",
                          "blocks.2": "prefetch"}
    assert result.latency_s == pytest.approx(12.5 * MS)
    assert result.peak_device_bytes == 5 * MB  # rest + a staging pool of two 2 MB slots


def test_layerwise_without_depth_loads_each_block_when_reached() -> None:
    result, frame, _ = run(*three_blocks(), plan(LayerwiseConfig(group_size=1, prefetch_depth=0)))
    assert rows(frame, ("load", "compute")) == [
        ("load", "dit", "rest", 0.0, 1.0),
        ("compute", "dit", "rest", 1.0, 1.5),
        ("load", "dit", "blocks.0", 1.5, 3.5),
        ("compute", "dit", "blocks.0", 3.5, 6.5),
        ("load", "dit", "blocks.1", 6.5, 8.5),
        ("compute", "dit", "blocks.1", 8.5, 11.5),
        ("load", "dit", "blocks.2", 11.5, 13.5),
        ("compute", "dit", "blocks.2", 13.5, 16.5),
    ]
    assert result.peak_device_bytes == 3 * MB


def test_layerwise_groups_and_resident_blocks() -> None:
    cfg = LayerwiseConfig(group_size=2, prefetch_depth=1, resident_blocks=1)
    result, frame, _ = run(*three_blocks(), plan(cfg))
    assert rows(frame, ("load", "compute")) == [
        ("load", "dit", "rest", 0.0, 1.0),
        ("load", "dit", "blocks.0", 1.0, 3.0),  # resident block, with the rest
        ("compute", "dit", "rest", 1.0, 1.5),
        ("compute", "dit", "blocks.0", 3.0, 6.0),
        ("load", "dit", "blocks.1", 6.0, 8.0),  # one group of two blocks, one copy each
        ("load", "dit", "blocks.2", 8.0, 10.0),
        ("compute", "dit", "blocks.1", 10.0, 13.0),
        ("compute", "dit", "blocks.2", 13.0, 16.0),
    ]
    released = rows(frame, ("release",))
    # the resident block stays through the use, released only when the request ends (so
    # the next request starts from the device as setup left it)
    assert released[-1] == ("release", "dit", "blocks.0", 16.0, None)
    assert frame[frame.kind == "release"].reason.iloc[-1] == "end"
    assert result.peak_device_bytes == 7 * MB  # rest 1 + resident 2 + two 2 MB slots


def test_pageable_copies_block_compute() -> None:
    p = plan(OffloadConfig(), host=HostOptions(pinned=False))
    result, frame, _ = run(*three_blocks(), p)
    loads = frame[frame.kind == "load"]
    assert set(loads.stream) == {"compute"}
    assert rows(frame, ("load",)) == [  # half the pinned bandwidth, one after another
        ("load", "dit", "rest", 0.0, 2.0), ("load", "dit", "blocks.0", 2.0, 6.0),
        ("load", "dit", "blocks.1", 6.0, 10.0), ("load", "dit", "blocks.2", 10.0, 14.0)]
    assert result.latency_s == pytest.approx(23.5 * MS)
    assert result.pinned_host_bytes == 0


def test_d2h_release_copies_back_after_the_use() -> None:
    result, frame, _ = run(*three_blocks(), plan(OffloadConfig(release="d2h")))
    assert rows(frame, ("compute",))[-1] == ("compute", "dit", "blocks.2", 9.0, 12.0)
    assert rows(frame, ("d2h",)) == [
        ("d2h", "dit", "rest", 12.0, 13.0), ("d2h", "dit", "blocks.0", 13.0, 15.0),
        ("d2h", "dit", "blocks.1", 15.0, 17.0), ("d2h", "dit", "blocks.2", 17.0, 19.0)]
    assert set(frame[frame.kind == "release"].reason) == {"d2h"}
    assert result.d2h_bytes == 7 * MB
    assert result.latency_s == pytest.approx(12 * MS)  # copies back do not hold up compute


def test_resident_components_load_once_at_setup() -> None:
    result, frame, _ = run(*two_stage(), Plan(components=(("te", OffloadConfig()),
                                                          ("dit", ResidentConfig()))))
    setup = frame[frame.stage == "setup"]
    assert rows(setup, ("load",)) == [  # from pageable memory: only units that move are pinned
        ("load", "dit", "rest", 0.0, 2.0), ("load", "dit", "blocks.0", 2.0, 6.0),
        ("load", "dit", "blocks.1", 6.0, 10.0)]
    assert result.setup_s == pytest.approx(10 * MS)
    assert result.pinned_host_bytes == 1 * MB  # the encoder's rest
    assert result.latency_s == pytest.approx(1 * MS + 2 * MS + 6.5 * MS)
    keeps = frame[frame.kind == "keep"]
    assert list(zip(keeps.component, keeps.reason, strict=True)) == [("dit", "resident")]


def test_a_plan_that_does_not_fit_names_the_unit_and_the_bytes_missing() -> None:
    schedule, times = two_stage()
    with pytest.raises(DoesNotFitError, match=r"dit\.blocks\.1 needs 2\.00 MB") as err:
        simulate(schedule, Plan(components=(("default", ResidentConfig()),)), ideal_profile(),
                 capacity_bytes=5 * MB, call_times_s=times)
    assert err.value.missing_bytes == 1 * MB


def test_a_component_used_by_two_stages_in_a_row_waits_for_every_block() -> None:
    """Regression: the layerwise hand-off into the same component's next use used to switch
    its visit table early, so the last blocks of the first use ran without waiting for their
    weights (compute of blocks.2 started at 6.5 ms, its copy landed at 7.5 ms)."""
    units = {"rest": MB, "blocks.0": 2 * MB, "blocks.1": 2 * MB, "blocks.2": 2 * MB}
    schedule = synthetic_schedule({"dit": units}, [(s, "dit", u) for s in "ab" for u in units])
    times = [0.5 * MS, MS, MS, MS] * 2
    for policy in ("static", "dynamic"):
        _, frame, driver = run(schedule, times, plan(LayerwiseConfig(prefetch_depth=2), policy))
        landed: dict[str, float] = {}
        for kind, _, unit, start, end in rows(frame, ("load", "compute")):
            if kind == "load":
                assert end is not None
                landed[unit] = end
            else:
                assert start >= landed[unit], (policy, unit, start, landed[unit])
        assert driver.manager.leftover_units() == []


def test_simulate_matches_the_driver_and_needs_no_tracer() -> None:
    schedule, times = three_blocks()
    p = plan(LayerwiseConfig())
    quiet = simulate(schedule, p, ideal_profile(), tracer=Tracer(enabled=False), call_times_s=times)
    traced, _, _ = run(schedule, times, p)
    # the trace adds what only it can tell (per-stage latency, streaming bandwidth)
    assert dataclasses.replace(traced, stage_latency_s={}, h2d_stream_bytes=0,
                               h2d_stream_bytes_per_s=None) == quiet


def expert_switch() -> tuple[Schedule, list[float]]:
    """Two DiT experts in one stage (Wan2.2): 1 MB rest (0.5 ms), four 2 MB blocks (1 ms)."""
    blocks = {f"blocks.{i}": 2 * MB for i in range(4)}
    units = {"hi": {"rest": MB, **blocks}, "lo": {"rest": MB, **blocks}}
    schedule = synthetic_schedule(units, [("denoise", c, u) for c in units for u in units[c]])
    return schedule, [0.5 * MS, MS, MS, MS, MS] * 2


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_prefetch_depth_carries_across_the_expert_switch(depth: int) -> None:
    """`prefetch_depth` groups of the next expert are in flight when the first one ends, as
    within an expert (the hand-off used to stop after its first group)."""
    _, frame, _ = run(*expert_switch(), plan(LayerwiseConfig(prefetch_depth=depth)))
    first_lo = frame[(frame.kind == "compute") & (frame.component == "lo")].index[0]
    early = frame.loc[:first_lo]
    early = early[(early.kind == "load") & (early.component == "lo") & (early.unit != "rest")]
    assert list(early.unit) == [f"blocks.{i}" for i in range(depth)]
    assert set(early.reason) == {"prefetch"}


def test_no_hand_off_into_a_use_the_release_would_undo() -> None:
    """Static policy: a component used by two stages in a row is released between them, so
    prefetching its next use's first blocks during this one only wastes the link (and stalls
    the release, which waits for them to land)."""
    units = {"rest": MB, "blocks.0": 2 * MB, "blocks.1": 2 * MB, "blocks.2": 2 * MB}
    schedule = synthetic_schedule({"dit": units}, [(s, "dit", u) for s in "ab" for u in units])
    times = [0.5 * MS, MS, MS, MS] * 2
    result, frame, _ = run(schedule, times, plan(LayerwiseConfig(prefetch_depth=2)))
    loads = frame[frame.kind == "load"]
    # the release of use a is also where b's rest is prefetched, still in stage a
    assert list(loads.groupby("stage").size().items()) == [("a", 5), ("b", 3)]
    assert result.h2d_bytes == 2 * 7 * MB
    waits = frame[frame.kind == "wait"]
    assert list(waits.unit) == ["rest", "blocks.0", "blocks.1", "blocks.2"] * 2
    # with the dynamic policy the component is kept, so the hand-off pays: block 0 of use b
    # is already on the device when b starts
    result, frame, _ = run(schedule, times, plan(LayerwiseConfig(prefetch_depth=2), "dynamic"))
    assert list(frame[frame.kind == "prepare"].reason) == ["cold", "kept"]
    b_loads = frame[(frame.kind == "load") & (frame.stage == "b")]
    assert "blocks.0" not in set(b_loads.unit)
