"""SimDevice on its own: copy engines, the compute clock, the ledger, host pinning."""

from __future__ import annotations

import dataclasses

import pytest

from resbench.devices.sim import SimDevice
from resbench.errors import DoesNotFitError
from resbench.schedule import UnitCall
from resbench.testing.synthetic import ideal_profile

MB = 10**6
MS = 1e-3
A, B, C = ("dit", "blocks.0"), ("dit", "blocks.1"), ("dit", "rest")


def call(index: int, activation_bytes: int = 0) -> UnitCall:
    return UnitCall(index=index, component="dit", unit="blocks.0", stage="denoise", step=0,
                    gemm_flops=0, attention_flops=0, conv_flops=0, memory_bytes=0, op_count=0,
                    activation_bytes=activation_bytes)


def device(*, times: list[float] | None = None, **profile_kw: object) -> SimDevice:
    dev = SimDevice(ideal_profile(**profile_kw),  # type: ignore[arg-type]
                    unit_bytes={A: 2 * MB, B: 3 * MB, C: 1 * MB},
                    call_times_s=times or [4 * MS] * 4, capacity_bytes=100 * MB)
    for key in (A, B, C):
        dev.register(key, 0, pinned=True)
    return dev


def test_copies_queue_on_one_engine_and_follow_the_compute_clock() -> None:
    dev = device()
    a = dev.h2d(A)
    b = dev.h2d(B)
    assert (a.start, a.end) == pytest.approx((0.0, 2 * MS))
    assert (b.start, b.end) == pytest.approx((2 * MS, 5 * MS))  # behind A on the engine
    assert dev.compute_begin(call(0)) == 0.0  # no wait: compute does not block on copies
    dev.compute_end(call(0))
    c = dev.h2d(C)  # issued by the host at compute time 4 ms, engine free at 5 ms
    assert (c.start, c.end) == pytest.approx((5 * MS, 6 * MS))
    assert dev.now() == pytest.approx(4 * MS)


def test_wait_blocks_compute_until_the_copy_lands() -> None:
    dev = device()
    b = dev.h2d(B)
    assert dev.wait(b) == 0.0  # compute reached the wait at 0
    assert dev.now() == pytest.approx(3 * MS)
    assert dev.compute_begin(call(0)) == pytest.approx(3 * MS)
    assert dev.compute_end(call(0)) == pytest.approx(7 * MS)
    late = dev.h2d(A)
    assert dev.wait(late) == pytest.approx(7 * MS)
    assert dev.now() == pytest.approx(9 * MS)


def test_a_pageable_copy_blocks_the_host() -> None:
    dev = device()
    dev.register(A, 0, pinned=False)
    t = dev.h2d(A)
    assert t.stream == "compute"
    assert (t.start, t.end) == pytest.approx((0.0, 4 * MS))  # half the pinned bandwidth
    assert dev.now() == pytest.approx(4 * MS)
    assert dev.pinned_bytes() == 4 * MB  # B and C only


def test_pinned_bytes_follow_registration() -> None:
    dev = device()
    assert dev.pinned_bytes() == 6 * MB
    dev.register(B, 0, pinned=False)
    dev.register(B, 0, pinned=False)
    assert dev.pinned_bytes() == 3 * MB
    dev.register(B, 0, pinned=True)
    assert dev.pinned_bytes() == 6 * MB


@pytest.mark.parametrize(("engines", "duplex", "next_h2d_start"), [(1, False, 4 * MS), (2, True, 3 * MS)])
def test_d2h_shares_the_engine_unless_duplex(engines: int, duplex: bool,
                                             next_h2d_start: float) -> None:
    dev = device(copy_engines=engines, duplex=duplex)
    dev.h2d(C)  # 0 → 1 ms
    dev.wait(dev.h2d(A))  # 1 → 3 ms; compute clock at 3 ms
    back = dev.d2h(C)
    assert (back.start, back.end) == pytest.approx((3 * MS, 4 * MS))
    assert not dev.on_device(C)
    assert dev.h2d(B).start == pytest.approx(next_h2d_start)


def test_a_unit_copied_back_is_read_again_only_once_its_d2h_has_landed() -> None:
    dev = device(copy_engines=2, duplex=True)
    dev.wait(dev.h2d(B))  # 0 → 3 ms
    back = dev.d2h(B)  # 3 → 6 ms on the D2H engine
    again = dev.h2d(B)  # the H2D engine is idle, but the host copy is still being written
    assert (back.end, again.start, again.end) == pytest.approx((6 * MS, 6 * MS, 9 * MS))
    assert dev.h2d(A).start == pytest.approx(9 * MS)  # others queue behind it as usual


def test_compute_beside_a_copy_is_slowed_down() -> None:
    dev = device(slowdown=0.5)
    dev.h2d(B)  # copy busy until 3 ms
    dev.compute_begin(call(0))
    assert dev.compute_end(call(0)) == pytest.approx(6 * MS)  # 4 ms x 1.5
    dev.compute_begin(call(1))  # engine idle since 3 ms
    assert dev.compute_end(call(1)) == pytest.approx(10 * MS)
    assert dev.busy_compute_s == pytest.approx(10 * MS)


def test_rounding_and_fragmentation_shrink_what_fits() -> None:
    profile = dataclasses.replace(ideal_profile(), allocator_rounding_bytes=2 * MB,
                                  fragmentation_fraction=0.1)
    dev = SimDevice(profile, unit_bytes={C: 1 * MB, A: 2 * MB}, call_times_s=[MS],
                    capacity_bytes=10 * MB, state_bytes=1 * MB)
    assert dev.ledger.capacity_bytes == 9 * MB
    assert dev.used_bytes() == 1 * MB  # the request's state
    dev.h2d(C)
    assert dev.used_bytes() == 3 * MB  # 1 MB rounded up to the 2 MB block
    t = dev.h2d(A)
    assert t.nbytes == 2 * MB  # copies move the unit's own bytes
    assert dev.free_bytes() == 4 * MB
    assert dev.peak_bytes() == 5 * MB


def test_staging_pool_slots_are_reused_and_charged_once() -> None:
    dev = device()
    dev.alloc_pool("dit.staging", 3 * MB, 2)
    assert dev.used_bytes() == 6 * MB
    dev.h2d(A, pool="dit.staging")
    dev.h2d(B, pool="dit.staging")
    assert dev.used_bytes() == 6 * MB
    with pytest.raises(RuntimeError, match="no free slot"):
        dev.h2d(C, pool="dit.staging")
    dev.drop(A)
    dev.h2d(C, pool="dit.staging")
    dev.drop(B)
    dev.drop(C)
    dev.free_pool("dit.staging")
    assert dev.used_bytes() == 0
    assert dev.peak_bytes() == 6 * MB


def test_a_unit_that_does_not_fit_names_itself_and_the_bytes_missing() -> None:
    dev = SimDevice(ideal_profile(), unit_bytes={A: 6 * MB, B: 6 * MB}, call_times_s=[MS],
                    capacity_bytes=10 * MB)
    dev.h2d(A)
    with pytest.raises(DoesNotFitError, match=r"dit\.blocks\.1 needs 6.00 MB") as err:
        dev.h2d(B)
    assert (err.value.component, err.value.unit, err.value.missing_bytes) == ("dit", "blocks.1",
                                                                              2 * MB)
    assert dev.used_bytes() == 6 * MB  # the failed charge left the ledger as it was


def test_activations_count_while_the_call_runs_and_name_the_call() -> None:
    dev = SimDevice(ideal_profile(), unit_bytes={A: 6 * MB}, call_times_s=[MS, MS],
                    capacity_bytes=10 * MB)
    dev.h2d(A)
    dev.compute_begin(call(0, activation_bytes=4 * MB))
    assert dev.used_bytes() == 10 * MB
    dev.compute_end(call(0, activation_bytes=4 * MB))
    assert (dev.used_bytes(), dev.peak_bytes()) == (6 * MB, 10 * MB)
    with pytest.raises(DoesNotFitError, match=r"activations of dit\.blocks\.0 needs 5.00 MB"):
        dev.compute_begin(call(1, activation_bytes=5 * MB))
    assert dev.now() == pytest.approx(MS)  # the failed call did not run
