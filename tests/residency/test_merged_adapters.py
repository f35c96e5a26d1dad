"""A LoRA merged on the device, for real on the CPU device: every way of keeping the merged
copy gives outputs bitwise equal to the unmanaged run, which merges once and keeps it."""

from __future__ import annotations

import functools

import pytest
import torch

from resbench.devices.cpu import CpuDevice
from resbench.drivers.torch_driver import ScheduleMismatch, TorchDriver
from resbench.pipeline import PipelineHooks, Request, unit_slots_of
from resbench.residency import (
    DisabledConfig,
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidencyManager,
    ResidentConfig,
    SnapshotConfig,
)
from resbench.residency.strategies import StrategyConfig
from resbench.schedule import Schedule
from resbench.testing.refine import ADAPTER, REFINER, ToyRefinePipeline, record_toy

REQUEST = Request(height=1, width=1, steps=2, guidance=1.0, cfg=False)
REFINER_CONFIGS: dict[str, StrategyConfig] = {
    "resident": ResidentConfig(),
    "snapshot": SnapshotConfig(),
    "re-merge": OffloadConfig(),
    "re-merge-noprefetch": OffloadConfig(prefetch=False),
    "d2h": OffloadConfig(release="d2h"),
    "disabled": DisabledConfig(),
}


@functools.cache
def reference(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return ToyRefinePipeline.build(dtype=dtype).run(REQUEST)


@functools.cache
def schedule(dtype: torch.dtype = torch.float32) -> Schedule:
    return record_toy(REQUEST, dtype=dtype)


def managed(plan: Plan, requests: int = 2, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    """Run `requests` requests after one setup; returns (outputs, manager, pipeline)."""
    pipe = ToyRefinePipeline.build(dtype=dtype)
    sched = schedule(dtype)
    manager = ResidencyManager(sched, plan, CpuDevice(unit_slots_of(pipe)), kinds=sched.kinds)
    driver = TorchDriver(pipe, manager)
    manager.setup()
    outputs = []
    for _ in range(requests):
        with driver.request():
            outputs.append(pipe.run(REQUEST, hooks=driver))
    driver.remove()
    return outputs, manager, pipe


def test_the_schedule_records_the_merge_and_its_gemm_flops() -> None:
    (merge,) = schedule().merges
    first = next(c for c in schedule().calls if c.component == REFINER)
    assert (merge.component, merge.adapter, merge.stage, merge.before_call) == (
        REFINER, ADAPTER, "refine", first.index)
    # 3 blocks × (up 32×16, down 16×32), rank 4, fp32: B@A is 2·out·r·in per Linear
    assert merge.linears == 6 and merge.op_count == 12
    assert merge.gemm_fp32_flops == 3 * 2 * (2 * 32 * 4 * 16) and merge.gemm_flops == 0
    assert merge.memory_bytes == 3 * 2 * (3 * 32 * 16 * 4)  # read W, read B@A, write W
    assert merge.adapter_bytes == 3 * 2 * (4 * (16 + 32) * 4)
    assert merge.work_bytes == 32 * 16 * 4


def test_the_adapter_changes_the_output() -> None:
    class NoMerge(PipelineHooks):
        def merge(self, component, adapter) -> bool:  # type: ignore[no-untyped-def]
            return True  # claims it is done: the refiner runs on the base weights

    assert not torch.equal(ToyRefinePipeline.build().run(REQUEST, hooks=NoMerge()), reference())


@pytest.mark.parametrize("policy", ["static", "dynamic"])
@pytest.mark.parametrize("choice", list(REFINER_CONFIGS))
def test_every_way_of_keeping_the_merged_copy_is_bitwise_equal(choice: str, policy: str) -> None:
    plan = Plan(policy=policy, buffer_margin_bytes=1 << 10, components=(
        ("default", LayerwiseConfig(prefetch_depth=1)), (REFINER, REFINER_CONFIGS[choice])))
    outputs, manager, pipe = managed(plan)
    assert torch.equal(outputs[0], reference()) and torch.equal(outputs[1], reference())
    assert manager.leftover_units() == []
    assert pipe.merged == set()  # the manager merged (or found it merged), never the pipeline


def test_the_disabled_policy_merges_once_and_keeps_it() -> None:
    outputs, manager, _ = managed(Plan(policy="disabled"))
    assert torch.equal(outputs[1], reference())
    events = manager.tracer.frame()
    assert list(events[events.kind == "merge"].reason) == ["first"]
    assert list(events[events.kind == "merge_skip"].reason) == ["device copy merged"]


def test_re_merge_merges_the_base_again_in_every_request() -> None:
    outputs, manager, _ = managed(Plan(components=((REFINER, OffloadConfig()),)))
    events = manager.tracer.frame()
    merges = events[events.kind == "merge"]
    assert list(merges.reason) == ["first", "re-merge"]
    assert set(merges.stage) == {"refine"} and set(merges.unit) == {ADAPTER}
    assert (merges.bytes == schedule().merges[0].adapter_bytes).all()
    assert torch.equal(outputs[1], outputs[0])


def test_snapshot_copies_the_merged_weights_back_once_and_loads_them_after() -> None:
    outputs, manager, _ = managed(Plan(components=((REFINER, SnapshotConfig()),)))
    events = manager.tracer.frame()
    merges = events[events.kind == "merge"]
    assert list(zip(merges.stage, merges.reason, strict=True)) == [("setup", "snapshot")]
    d2h = events[events.kind == "d2h"]
    assert set(d2h.stage) == {"setup"} and set(d2h.reason) == {f"snapshot: {ADAPTER} merged"}
    assert d2h.bytes.sum() == schedule().component_bytes(REFINER)
    assert list(events[events.kind == "merge_skip"].reason) == ["host copy merged"] * 2
    assert torch.equal(outputs[0], reference())


def test_bf16_re_merge_is_bit_identical_to_merging_once() -> None:
    outputs, _, _ = managed(Plan(components=((REFINER, OffloadConfig()),)), dtype=torch.bfloat16)
    assert outputs[0].dtype == torch.bfloat16
    assert torch.equal(outputs[0], reference(torch.bfloat16))
    assert torch.equal(outputs[1], outputs[0])


def test_a_merge_the_schedule_does_not_hold_is_a_mismatch() -> None:
    sched = schedule()
    pipe = ToyRefinePipeline.build()
    bare = Schedule(**{f: getattr(sched, f) for f in sched.__slots__ if f != "merges"})
    manager = ResidencyManager(bare, Plan(), CpuDevice(unit_slots_of(pipe)), kinds=bare.kinds)
    with pytest.raises(ScheduleMismatch, match=f"merges {ADAPTER} into {REFINER}"):
        TorchDriver(pipe, manager).run(REQUEST)
