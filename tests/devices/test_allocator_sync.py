"""The simulated device waits where the caching allocator synchronises at the cap: a copy back
still holding its block delays the load that needs the memory (timeline worked by hand)."""

from __future__ import annotations

import dataclasses

import pytest

from resbench.devices.sim import SimDevice
from resbench.testing.synthetic import ideal_profile

MB = 10**6


def device() -> SimDevice:
    """1 GB/s both ways, duplex (a copy back does not hold the H2D engine), the allocator
    modelled with a 150 MB cap: two 100 MB units cannot both hold a segment."""
    profile = dataclasses.replace(ideal_profile(duplex=True, copy_engines=2),
                                  allocator_large_buffer_bytes=20 * 2**20,
                                  allocator_rounding_bytes=2 * 2**20)
    return SimDevice(profile, unit_bytes={("te", "rest"): 100 * MB, ("dit", "rest"): 100 * MB},
                     call_times_s=[0.0], capacity_bytes=150 * MB)


def test_a_load_at_the_cap_waits_for_the_copy_back_holding_its_memory() -> None:
    """te loads 0-0.1 s and is copied back 0.1-0.2 s (its block stays reserved until then);
    dit's block passes the cap, so the allocator synchronises: the host, which issued all of
    it at 0 s (copies and the wait are asynchronous), waits until 0.2 s, and dit loads
    0.2-0.3 s — not 0.1-0.2 s, as when the synchronisation was free."""
    dev = device()
    te = dev.h2d(("te", "rest"))
    dev.wait(te)
    back = dev.d2h(("te", "rest"))
    assert (back.start, back.end) == pytest.approx((0.1, 0.2))
    dit = dev.h2d(("dit", "rest"))
    assert (dit.start, dit.end) == pytest.approx((0.2, 0.3))
    assert dev.sync_wait_s == pytest.approx(0.2)
    assert dev.allocator is not None and dev.allocator.syncs >= 1


def test_a_dropped_unit_costs_the_load_no_wait() -> None:
    """te dropped instead (no copy back): the allocator still synchronises at the cap, but
    only until the compute stream is past te (0.1 s), where the load would start anyway:
    dit loads 0.1-0.2 s."""
    dev = device()
    te = dev.h2d(("te", "rest"))
    dev.wait(te)
    dev.drop(("te", "rest"))
    dit = dev.h2d(("dit", "rest"))
    assert (dit.start, dit.end) == pytest.approx((0.1, 0.2))
    assert dev.sync_wait_s == pytest.approx(0.1)
