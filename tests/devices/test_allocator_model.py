"""The caching-allocator model (`devices.allocator`) alone and inside `SimDevice`: segment
sizes, per-stream reuse, cross-stream lifetimes, release at the cap; exact bytes by hand."""

from __future__ import annotations

import dataclasses

import pytest

from resbench.devices.allocator import AllocatorOOM, CachingAllocator
from resbench.devices.sim import SimDevice
from resbench.errors import DoesNotFitError
from resbench.schedule import UnitCall
from resbench.testing.synthetic import ideal_profile

MiB = 1 << 20
MS = 1e-3
A, B, C, X = ("dit", "blocks.0"), ("dit", "blocks.1"), ("dit", "blocks.2"), ("vae", "rest")


def call(index: int, activation_bytes: int = 0) -> UnitCall:
    return UnitCall(index=index, component="dit", unit="blocks.0", stage="denoise", step=0,
                    gemm_flops=0, attention_flops=0, conv_flops=0, memory_bytes=0, op_count=0,
                    activation_bytes=activation_bytes)


def device(capacity_mib: int, **unit_mib: int) -> SimDevice:
    profile = dataclasses.replace(ideal_profile(), allocator_rounding_bytes=2 * MiB,
                                  allocator_large_buffer_bytes=20 * MiB)
    names = {"A": A, "B": B, "C": C, "X": X}
    dev = SimDevice(profile, unit_bytes={names[k]: v * MiB for k, v in unit_mib.items()},
                    call_times_s=[4 * MS] * 4, capacity_bytes=capacity_mib * MiB)
    for key in dev._raw_bytes:
        dev.register(key, 0, pinned=True)
    return dev


def test_segment_sizes_follow_the_small_and_large_pools() -> None:
    a = CachingAllocator(1 << 40)
    assert [a.segment_bytes(n) for n in (512, MiB, MiB + 512, 10 * MiB - 512, 10 * MiB,
                                         10 * MiB + 1)] == [2 * MiB, 2 * MiB, 20 * MiB,
                                                            20 * MiB, 10 * MiB, 12 * MiB]
    small = a.malloc(100, "compute", 0.0)  # 512 B block in a 2 MiB segment
    mid = a.malloc(3 * MiB, "compute", 0.0)  # 3 MiB block in a 20 MiB segment, split
    assert (small.size, mid.size) == (512, 3 * MiB)
    assert (a.allocated_bytes, a.reserved_bytes) == (512 + 3 * MiB, 22 * MiB)
    a.malloc(4 * MiB, "compute", 0.0)  # the 17 MiB remainder serves it: no new segment
    assert a.reserved_bytes == 22 * MiB


def test_a_free_block_serves_only_its_own_stream() -> None:
    a = CachingAllocator(1 << 40)
    a.free(a.malloc(12 * MiB, "h2d", 0.0))
    a.malloc(12 * MiB, "compute", 0.0)  # the cached h2d block is not the compute stream's
    assert (a.allocated_bytes, a.reserved_bytes) == (12 * MiB, 24 * MiB)
    a.malloc(12 * MiB, "h2d", 0.0)  # ...but the next h2d request takes it
    assert a.reserved_bytes == 24 * MiB


def test_a_block_used_by_another_stream_is_reusable_only_once_that_stream_is_past_it() -> None:
    a = CachingAllocator(1 << 40)
    a.free(a.malloc(12 * MiB, "h2d", 0.0), ready_s=5.0)
    assert (a.allocated_bytes, a.reserved_bytes) == (0, 12 * MiB)  # allocated drops at once
    a.malloc(12 * MiB, "h2d", 4.0)  # compute has not passed it at 4 s: a new segment
    assert a.reserved_bytes == 24 * MiB
    a.malloc(12 * MiB, "h2d", 5.0)  # at 5 s it has
    assert a.reserved_bytes == 24 * MiB


def test_at_the_cap_idle_segments_are_released_and_pending_ones_synchronised() -> None:
    a = CachingAllocator(40 * MiB)
    a.free(a.malloc(12 * MiB, "h2d", 0.0))
    a.free(a.malloc(14 * MiB, "h2d", 0.0), ready_s=9.0)
    a.malloc(14 * MiB, "compute", 0.0)  # 26 + 14 = 40: fits without releasing
    assert a.reserved_bytes == 40 * MiB
    a.malloc(12 * MiB, "compute", 0.0)  # 52 > 40: the idle 12 MiB segment goes first
    assert (a.reserved_bytes, a.peak_reserved_bytes) == (40 * MiB, 40 * MiB)
    a.malloc(14 * MiB, "compute", 0.0)  # then the pending 14 MiB one, after a synchronise
    assert (a.reserved_bytes, a.allocated_bytes) == (40 * MiB, 40 * MiB)
    with pytest.raises(AllocatorOOM):
        a.malloc(512, "compute", 0.0)


def test_a_calls_tensors_fill_cached_blocks_before_a_new_segment() -> None:
    a = CachingAllocator(1 << 40)
    small, big = a.malloc(12 * MiB, "compute", 0.0), a.malloc(30 * MiB, "compute", 0.0)
    a.free(small)
    a.free(big)
    blocks = a.malloc_many(50 * MiB, "compute", 0.0)  # 30 + 12 cached, 8 MiB new (20 MiB seg)
    assert [b.size for b in blocks] == [30 * MiB, 12 * MiB, 8 * MiB]
    assert (a.allocated_bytes, a.reserved_bytes) == (50 * MiB, 62 * MiB)
    for b in blocks:
        a.free(b)
    assert [b.size for b in a.malloc_many(20 * MiB, "compute", 0.0)] == [20 * MiB]  # best fit
    assert a.reserved_bytes == 62 * MiB


def test_sim_streamed_block_stays_reserved_until_compute_has_passed_its_drop() -> None:
    dev = device(100, A=12, B=12, C=12)
    alloc = dev.allocator
    assert alloc is not None
    dev.wait(dev.h2d(A))
    dev.compute_begin(call(0))
    dev.compute_end(call(0))
    dev.drop(A)  # read by compute until call 0 ends (12 ms + 4 ms); the host is at its start
    dev.wait(dev.h2d(B))
    assert (dev.used_bytes(), alloc.allocated_bytes, alloc.reserved_bytes) == (
        12 * MiB, 12 * MiB, 24 * MiB)
    dev.compute_begin(call(1))  # the host issues call 1: call 0 has ended
    dev.h2d(C)  # takes A's block
    assert (alloc.allocated_bytes, alloc.reserved_bytes) == (24 * MiB, 24 * MiB)
    assert dev.peak_reserved_bytes() == 24 * MiB


def test_sim_pools_and_activations_are_compute_stream_blocks() -> None:
    dev = device(100, A=12)
    alloc = dev.allocator
    assert alloc is not None
    dev.alloc_pool("dit.staging", 12 * MiB, 2)
    dev.h2d(A, pool="dit.staging")  # a slot: no allocation
    assert alloc.reserved_bytes == 24 * MiB
    dev.compute_begin(call(0, activation_bytes=10 * MiB))
    assert alloc.reserved_bytes == 34 * MiB
    dev.compute_end(call(0, activation_bytes=10 * MiB))
    dev.drop(A)
    dev.free_pool("dit.staging")  # the H2D stream wrote a slot until 12 ms: pending
    assert (alloc.allocated_bytes, alloc.reserved_bytes) == (0, 34 * MiB)


def test_sim_fit_is_decided_on_reserved_bytes_not_on_the_ledger() -> None:
    dev = device(30, A=12, X=24)
    dev.h2d(X)
    dev.drop(X)  # compute is at 0 and so is the host: reusable at once
    dev.h2d(A)  # best fit: X's 24 MiB segment, split; its 12 MiB rest stays an h2d block
    assert dev.used_bytes() == 12 * MiB  # the ledger: 12 + 12 MiB of activations would fit 30
    with pytest.raises(DoesNotFitError) as err:
        dev.compute_begin(call(0, activation_bytes=12 * MiB))
    assert err.value.missing_bytes == 6 * MiB  # 24 reserved + a 12 MiB segment - 30
    assert "activations of dit.blocks.0 needs 12.58 MB" in str(err.value)
    assert "25.17 MB reserved (12.58 MB allocated) of the 31.46 MB budget" in str(err.value)


def test_simulate_reports_the_copy_streams_reserve_and_fits_below_it_at_the_cap() -> None:
    from resbench.analysis.budget import needed_budget_bytes
    from resbench.drivers.replay import simulate
    from resbench.residency.plan import Plan
    from resbench.residency.strategies import OffloadConfig
    from resbench.testing.synthetic import synthetic_schedule

    schedule = synthetic_schedule({"te": {"rest": 24 * MiB}, "dit": {"rest": 24 * MiB}},
                                  [("encode", "te", "rest"), ("denoise", "dit", "rest")],
                                  kinds={"te": "text_encoder"})
    plan = Plan(name="cold", components=(("default", OffloadConfig(prefetch=False)),))
    profile = dataclasses.replace(ideal_profile(), allocator_rounding_bytes=2 * MiB,
                                  allocator_large_buffer_bytes=20 * MiB)
    times = [4 * MS, 4 * MS]
    r = simulate(schedule, plan, profile, call_times_s=times)
    # te is dropped while the host is still at the start of its call: dit's copy gets a new
    # H2D segment, te's stays reserved until compute is past it
    assert (r.peak_device_bytes, r.peak_reserved_bytes) == (24 * MiB, 48 * MiB)
    # under a cap the allocator synchronises and gives te's segment back: 25.5 MiB is enough
    # (the bisection stops within 2 MiB of the allocated peak)
    assert needed_budget_bytes(schedule, plan, profile, call_times_s=times) == 51 * MiB // 2
    capped = simulate(schedule, plan, profile, capacity_bytes=24 * MiB, call_times_s=times)
    assert capped.peak_reserved_bytes == 24 * MiB


def test_the_library_workspace_is_held_from_the_start_on_the_compute_stream() -> None:
    profile = dataclasses.replace(ideal_profile(), allocator_rounding_bytes=2 * MiB,
                                  allocator_large_buffer_bytes=20 * MiB,
                                  library_workspace_bytes=32 * MiB)
    dev = SimDevice(profile, unit_bytes={A: 12 * MiB}, call_times_s=[4 * MS],
                    capacity_bytes=100 * MiB, state_bytes=3 * MiB)
    assert dev.allocator is not None
    # 32 MiB segment for cuBLAS, a 20 MiB one (3 MiB is below 10 MiB) for the state
    assert (dev.used_bytes(), dev.allocator.reserved_bytes) == (35 * MiB, 52 * MiB)
    dev.compute_begin(call(0, activation_bytes=12 * MiB))  # fills the state segment's 17 MiB
    assert dev.allocator.reserved_bytes == 52 * MiB


def test_with_the_allocator_modelled_the_rounded_ledger_refuses_nothing() -> None:
    # 18 units of 1.1 MiB: the ledger rounds each to 2 MiB (36 MiB, over a 30 MiB cap), the
    # allocator packs them into one 20 MiB segment of the H2D stream (19.8 MiB allocated)
    profile = dataclasses.replace(ideal_profile(), allocator_rounding_bytes=2 * MiB,
                                  allocator_large_buffer_bytes=20 * MiB)
    keys = [("dit", f"blocks.{i}") for i in range(18)]
    dev = SimDevice(profile, unit_bytes=dict.fromkeys(keys, 11 * MiB // 10),
                    call_times_s=[4 * MS], capacity_bytes=30 * MiB)
    for key in keys:
        dev.h2d(key)
    assert dev.allocator is not None and dev.allocator.reserved_bytes == 20 * MiB
    assert (dev.used_bytes(), dev.capacity_bytes()) == (36 * MiB, 30 * MiB)
