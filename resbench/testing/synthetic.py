"""Hand-made schedules and an idealised card, for simulator tests whose timelines are worked
out by hand.

`synthetic_schedule` builds a `Schedule` from unit sizes and an ordered list of calls (costs
come separately, as the `call_times_s` that `simulate` takes). `ideal_profile` is a card with
one copy engine, a flat bandwidth (1e9 B/s: one MB copies in one ms), no latency, no
allocator rounding, no fragmentation and no compute slowdown, so every event time is a sum
of the numbers the test chose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from resbench.hardware import HardwareProfile, get_profile
from resbench.models.base import REST, UnitInfo
from resbench.schedule import ComponentUse, Schedule, UnitCall


def ideal_profile(*, bandwidth_bytes_per_s: float = 1e9, capacity_bytes: int = 10**12,
                  pageable_bytes_per_s: float | None = None, copy_engines: int = 1,
                  duplex: bool = False, slowdown: float = 0.0) -> HardwareProfile:
    """`h100-80g` with every overhead the simulator models set to nothing (see module doc).

    `pageable_bytes_per_s` defaults to half the pinned bandwidth so that pageable copies are
    told apart in timelines.
    """
    pageable = pageable_bytes_per_s or bandwidth_bytes_per_s / 2
    return dataclasses.replace(
        get_profile("h100-80g"), name="ideal", description="synthetic test card",
        memory_capacity_bytes=capacity_bytes, usable_fraction=1.0,
        h2d_pinned_bytes_per_s=bandwidth_bytes_per_s, d2h_pinned_bytes_per_s=bandwidth_bytes_per_s,
        h2d_pageable_bytes_per_s=pageable, d2h_pageable_bytes_per_s=pageable,
        transfer_latency_s=0.0, copy_engines=copy_engines, duplex_copies=duplex,
        copy_compute_slowdown=slowdown, allocator_rounding_bytes=0, fragmentation_fraction=0.0,
    )


def synthetic_schedule(units: Mapping[str, Mapping[str, int]],
                       calls: Sequence[tuple[str, str, str]], *,
                       kinds: Mapping[str, str] | None = None,
                       activation_bytes: Mapping[tuple[str, str], int] | None = None,
                       no_prefetch: Sequence[tuple[str, str]] = (),
                       state_bytes: int = 0) -> Schedule:
    """A schedule of `calls` — (stage, component, unit) in execution order — over `units`
    (component → unit name → weight bytes; blocks in the order given, `rest` anywhere).

    Stages run in order of first appearance; each (stage, component) pair is one declared use
    (`no_prefetch` lists the pairs whose stage forbids prefetching). `kinds` maps components to
    text_encoder | dit | vae (default dit); `activation_bytes` gives (component, unit) the
    working memory of each of its calls (default 0). All FLOPs are 0: pass call times.
    """
    infos = []
    for comp, sizes in units.items():
        blocks = [name for name in sizes if name != REST]
        for name, nbytes in sizes.items():
            index = -1 if name == REST else blocks.index(name)
            infos.append(UnitInfo(comp, name, index, nbytes // 2, nbytes))
    acts = activation_bytes or {}
    out_calls = []
    stages: list[str] = []
    phases: dict[tuple[str, str], int] = {}
    for i, (stage, comp, unit) in enumerate(calls):
        if unit not in units[comp]:
            raise KeyError(f"call {i}: {comp} has no unit {unit!r}")
        if stage not in stages:
            stages.append(stage)
        phases.setdefault((stage, comp), sum(1 for s, _ in phases if s == stage))
        out_calls.append(UnitCall(index=i, component=comp, unit=unit, stage=stage, step=-1,
                                  gemm_flops=0, attention_flops=0, conv_flops=0, memory_bytes=0,
                                  op_count=0, activation_bytes=acts.get((comp, unit), 0)))
    uses = tuple(ComponentUse(stage, comp, phase, allow_prefetch=(stage, comp) not in no_prefetch)
                 for (stage, comp), phase in phases.items())
    return Schedule(model="synthetic", scale=1.0, request={}, units=tuple(infos), uses=uses,
                    stage_order=tuple(stages), calls=tuple(out_calls), state_bytes=state_bytes,
                    component_kinds=tuple((c, (kinds or {}).get(c, "dit")) for c in units))
