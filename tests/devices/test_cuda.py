"""`CudaDevice` and `resbench.measure`.

The layout and host-copy tests run anywhere; the rest need a GPU (`pytest -m gpu`) and run
Wan2.2 A14B at scale 0.05 with 3 steps (both experts used), where every plan must give an
output bitwise equal to the unmanaged run.
"""

from __future__ import annotations

import pytest
import torch

from resbench.devices.cuda import ALIGN, HostWeights, UnitLayout
from resbench.errors import DeviceOOMError
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan, ResidentConfig
from resbench.residency.plan import HostOptions

SCALE = 0.05
PRESETS = ["all-resident", "sglang-wan2.2", "diffusers-model-offload",
           "diffusers-sequential-offload", "diffusers-group-offload", "kijai-block-swap"]


def test_layout_is_aligned_and_views_round_trip() -> None:
    tensors = [torch.randn(3, 5, dtype=torch.bfloat16), torch.randn(7), torch.arange(4)]
    layout = UnitLayout.of(tensors)
    assert all(o % ALIGN == 0 for o in layout.offsets)
    assert layout.total == layout.offsets[-1] + 4 * 8
    buf = torch.zeros(layout.total, dtype=torch.uint8)
    for view, t in zip(layout.views(buf), tensors, strict=True):
        view.copy_(t)
    for view, t in zip(layout.views(buf), tensors, strict=True):
        assert view.dtype == t.dtype and torch.equal(view, t)


def test_host_weights_pageable_capture_and_alias() -> None:
    host = HostWeights()
    w = [torch.randn(4, 4), torch.ones(4, dtype=torch.bfloat16)]
    host.capture(("a", "blocks.0"), w, pin=False)
    host.alias(("b", "blocks.0"), ("a", "blocks.0"))
    src = host.source(("b", "blocks.0"), pinned=False)
    views = host.units[("a", "blocks.0")].layout.views(src)
    assert torch.equal(views[0], w[0]) and torch.equal(views[1], w[1])
    assert host.units[("a", "blocks.0")] is host.units[("b", "blocks.0")]
    assert host.host_bytes() == host.units[("a", "blocks.0")].layout.total


def test_measure_real_on_the_cpu_device_matches_unmanaged() -> None:
    """The whole `measure_real` path (timing marks, trace summary) without a GPU."""
    from resbench.measure import measure_real, measure_unmanaged

    spec = get_model("wan2.2")
    request = Request.for_model(spec, height=32, width=32, frames=5, steps=3)
    ref = measure_unmanaged(spec, request, scale=SCALE, device="cpu", warmup=False,
                            keep_output=True)
    res = measure_real(spec, request, "sglang-wan2.2", budget_bytes=None, scale=SCALE,
                       device="cpu", warmup=False, keep_output=True)
    assert torch.equal(res["output"], ref["output"])
    assert set(res["stage_latency_s"]) == {"text_encode", "denoise", "decode"}
    assert res["h2d_stream_bytes"] > 0 and res["latency_s"] > 0
    assert res["latency_s"] >= sum(res["stage_latency_s"].values()) * 0.99


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    from resbench.measure import measure_unmanaged, prepare_weights
    from resbench.record import record_schedule

    spec = get_model("wan2.2")
    request = Request.for_model(spec, height=64, width=64, frames=5, steps=3)
    weights = prepare_weights(spec, scale=SCALE)
    schedule = record_schedule(spec, request, scale=SCALE)
    ref = measure_unmanaged(spec, request, scale=SCALE, weights=weights, keep_output=True)
    yield spec, request, weights, schedule, ref["output"]
    weights.host.close()


def _plans() -> list[Plan | str]:
    custom = [
        Plan(name="offload-d2h-prefetch", components=(("default", OffloadConfig(release="d2h")),)),
        Plan(name="layerwise-g2-d3-spaced", components=(
            ("dit", LayerwiseConfig(group_size=2, prefetch_depth=3, resident_blocks=3,
                                    placement="spaced")),
            ("default", OffloadConfig()))),
        Plan(name="dynamic-offload", policy="dynamic", components=(("default", OffloadConfig()),)),
        Plan(name="pageable-layerwise", host=HostOptions(pinned=False),
             components=(("default", LayerwiseConfig(prefetch_depth=2)),)),
        Plan(name="pinned-budget", host=HostOptions(pinned=True, pinned_budget_bytes=10_000_000),
             components=(("default", LayerwiseConfig(prefetch_depth=1)),)),
    ]
    return [*PRESETS, *custom]


@pytest.mark.parametrize("plan", _plans(), ids=lambda p: p if isinstance(p, str) else p.name)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_plan_equals_unmanaged(setup, plan) -> None:  # type: ignore[no-untyped-def]
    from resbench.measure import measure_real

    spec, request, weights, schedule, ref = setup
    res = measure_real(spec, request, plan, budget_bytes=None, scale=SCALE, warmup=False,
                       weights=weights, schedule=schedule, keep_output=True)
    diff = (res["output"] - ref).abs().max().item()
    assert torch.equal(res["output"], ref), f"max abs diff {diff}"
    frame = res["trace"]
    loads = frame[frame.kind == "load"]
    assert (loads.end_s >= loads.t_s).all()
    assert res["latency_s"] > 0 and res["peak_device_bytes"] > 0
    assert torch.cuda.memory_allocated() < 64 * 2**20, "device copies left behind"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_slabs_are_exact_and_pinned(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, weights, _, _ = setup
    host = weights.host
    unique = {id(u): u for u in host.units.values()}.values()
    assert host.pinned_bytes() == sum(u.layout.total for u in unique if u.pinned is not None)
    assert all(u.pinned.is_pinned() for u in unique if u.pinned is not None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_oom_names_the_unit_and_frees_memory(setup) -> None:  # type: ignore[no-untyped-def]
    from resbench.measure import measure_real

    spec, request, weights, schedule, _ = setup
    plan = Plan(name="resident", components=(("default", ResidentConfig()),))
    total = sum(u.weight_bytes for u in schedule.units)
    with pytest.raises(DeviceOOMError) as info:
        measure_real(spec, request, plan, budget_bytes=total // 3, scale=SCALE, warmup=False,
                     weights=weights, schedule=schedule)
    assert "out of device memory" in str(info.value) and info.value.component
    assert torch.cuda.memory_allocated() < 64 * 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_streamed_copies_overlap_compute(setup) -> None:  # type: ignore[no-untyped-def]
    """With prefetch, most H2D time of streamed blocks runs beside compute (not stalled)."""
    from resbench.measure import measure_real

    spec, request, weights, schedule, _ = setup
    plan = Plan(name="lw", components=(("dit", LayerwiseConfig(prefetch_depth=2)),))
    res = measure_real(spec, request, plan, budget_bytes=None, scale=SCALE, warmup=True,
                       weights=weights, schedule=schedule)
    frame = res["trace"]
    waits = frame[frame.kind == "wait"]
    assert (waits.stall_s >= 0).all()
    assert res["h2d_stream_bytes"] > 0 and res["h2d_stream_bytes_per_s"] > 1e9
