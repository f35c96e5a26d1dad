"""Eviction under the dynamic policy: which kept component goes, worked out by hand.

The schedule runs on the ideal card of `resbench.testing.synthetic` (one copy engine at
1e9 B/s: a 1 MB unit copies in 1 ms; no latency, rounding or fragmentation) with call times
given in ms, so every time below is a sum of the inputs.
"""

from __future__ import annotations

import pandas as pd
import pytest

from resbench.drivers.replay import sim_device
from resbench.execution import Execution
from resbench.residency import OffloadConfig, Plan
from resbench.testing.synthetic import ideal_profile, synthetic_schedule
from resbench.trace import Tracer

MB = 10**6
MS = 1e-3


def timeline(frame: pd.DataFrame) -> list[tuple[str, str, float, float | None]]:
    """(kind, component, start ms, end ms) of the copies, waits, computes, releases, evictions."""
    out = []
    for r in frame[frame.kind.isin(["load", "wait", "compute", "release", "evict"])].itertuples():
        end = None if pd.isna(r.end_s) else round(r.end_s / MS, 9)
        out.append((r.kind, r.component, round(r.t_s / MS, 9), end))
    return out


def test_memory_pressure_evicts_the_kept_component_used_farthest_ahead() -> None:
    """Four offloaded components, one unit each, on a 10 MB card, dynamic policy, no margin:

        call  stage  component  size  compute
        0     1      a          3 MB  2 ms
        1     2      b          3 MB  2 ms
        2     3      d          1 MB  1 ms
        3     4      c          5 MB  4 ms
        4     5      a                2 ms
        5     6      b                2 ms   (stage 6 forbids prefetching b)

    a and b are used again later, and after each of their uses the next one's weights are
    already on their way with room to spare, so both are kept (6 MB). d is never used again,
    so it is released after its use. Then c needs 5 MB and 4 MB are free: one of the kept
    components must go, and either would make room. a is next used at call 4, b at call 5,
    so b goes — although a is the least recently used of the two and comes first in the
    plan's component order. a then runs straight from the device, and b, whose last stage
    may not prefetch, comes back cold at its use.

    Timeline (ms):
      0   a cold: copy 0-3; b prefetched at a's start (7 MB free), queued behind: 3-6
      3   a computes 3-5; kept at 5
      5   b starts, its copy lands at 6; d prefetched (4 MB free), queued: 6-7
      6   b computes 6-8; kept at 8 (3 MB free)
      8   d computes 8-9 (landed at 7); released at 9
      9   c needs 5 MB: b evicted and released; c copies 9-14, computes 14-18; released
      18  a computes 18-20 (kept: no copy, no wait); released at 20 (never used again)
      20  b cold: copies 20-23, computes 23-25; released at 25 (end of the request)
    latency 25 ms; copied 3 + 3 + 1 + 5 + 3 = 15 MB.
    """
    schedule = synthetic_schedule(
        {"a": {"rest": 3 * MB}, "b": {"rest": 3 * MB}, "c": {"rest": 5 * MB},
         "d": {"rest": MB}},
        [("1", "a", "rest"), ("2", "b", "rest"), ("3", "d", "rest"), ("4", "c", "rest"),
         ("5", "a", "rest"), ("6", "b", "rest")],
        no_prefetch=[("6", "b")])
    times = [2 * MS, 2 * MS, 1 * MS, 4 * MS, 2 * MS, 2 * MS]
    plan = Plan(policy="dynamic", components=(("default", OffloadConfig()),))
    driver = Execution(schedule, plan, sim_device(schedule, ideal_profile(),
                                                  capacity_bytes=10 * MB, call_times_s=times),
                       tracer=Tracer())
    result = driver.run()
    frame = driver.manager.tracer.frame()

    keeps = frame[frame.kind == "keep"]
    assert list(zip(keeps.component, keeps.reason, strict=True)) == [
        ("a", "dynamic_budget"), ("b", "dynamic_budget")]
    evicts = frame[frame.kind == "evict"]
    assert list(zip(evicts.component, evicts.reason, strict=True)) == [
        ("b", "prefetch: belady (next use at call 5)")]
    assert timeline(frame) == [
        ("load", "a", 0.0, 3.0),
        ("load", "b", 3.0, 6.0),
        ("wait", "a", 0.0, 3.0),
        ("compute", "a", 3.0, 5.0),
        ("load", "d", 6.0, 7.0),
        ("wait", "b", 5.0, 6.0),
        ("compute", "b", 6.0, 8.0),
        ("wait", "d", 8.0, 8.0),
        ("compute", "d", 8.0, 9.0),
        ("release", "d", 9.0, None),
        ("evict", "b", 9.0, None),
        ("release", "b", 9.0, None),
        ("load", "c", 9.0, 14.0),
        ("wait", "c", 9.0, 14.0),
        ("compute", "c", 14.0, 18.0),
        ("release", "c", 18.0, None),
        ("compute", "a", 18.0, 20.0),
        ("release", "a", 20.0, None),
        ("load", "b", 20.0, 23.0),
        ("wait", "b", 20.0, 23.0),
        ("compute", "b", 23.0, 25.0),
        ("release", "b", 25.0, None),
    ]
    prepares = frame[frame.kind == "prepare"]
    assert list(zip(prepares.component, prepares.reason, strict=True)) == [
        ("a", "cold"), ("b", "prefetched"), ("d", "prefetched"), ("c", "prefetched"),
        ("a", "kept"), ("b", "cold")]
    assert result.latency_s == pytest.approx(25 * MS)
    assert result.h2d_bytes == 15 * MB
    assert result.peak_device_bytes == 8 * MB  # a and c, once b has gone
