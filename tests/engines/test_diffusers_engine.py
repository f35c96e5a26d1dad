"""The diffusers pipelines under the residency manager on the CPU device: every strategy and
policy gives the unmanaged output bitwise, on Wan2.2 A14B across the expert switch and on
FLUX.1-dev, through the execution layer (`Execution`, `TorchDriver`, `CpuDevice`)."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from resbench.devices.cpu import CpuDevice
from resbench.drivers.torch_driver import ScheduleMismatch
from resbench.engines.diffusers_engine import DiffusersEngine
from resbench.engines.pipeline import DiffusersPipeline
from resbench.execution import CpuBackend, Execution, RunResult, SimBackend
from resbench.hardware import get_profile
from resbench.models import get_model
from resbench.pipeline import Request, unit_slots_of
from resbench.residency import (
    DisabledConfig,
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidentConfig,
)
from resbench.schedule import Schedule
from resbench.trace import Tracer
from tests.engines.helpers import FLUX_TINY, WAN_TINY

WAN, FLUX = "wan2.2-t2v-a14b", "flux.1-dev"
HIGH, LOW = "transformer", "transformer_2"
# Experts of ~5 MB each, larger than the tiny VAE (~3.7 MB): a budget can hold one, not two.
BIG_EXPERT = {"num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 1024,
              "num_layers": 3, "text_dim": 32}
WAN_BIG_EXPERTS = {**WAN_TINY, HIGH: BIG_EXPERT, LOW: BIG_EXPERT}
WAN_BIG = "wan-big-experts"
# Wan: the shipped UniPC (flow_shift 3) over 3 steps gives t = 1000, 857, 500 against the
# boundary 875: step 0 on the high-noise expert, steps 1-2 on the low-noise one.
WAN_REQUEST = Request(height=32, width=32, frames=5, steps=3, guidance=4.0)
CASES = {  # case → (model, config overrides, request)
    WAN: (WAN, WAN_TINY, WAN_REQUEST),
    FLUX: (FLUX, FLUX_TINY, Request(height=32, width=32, steps=2, guidance=3.5, cfg=False)),
    WAN_BIG: (WAN, WAN_BIG_EXPERTS, WAN_REQUEST),
}

STRATEGIES = {
    "resident": ResidentConfig(),
    "offload": OffloadConfig(),
    "offload-d2h-noprefetch": OffloadConfig(prefetch=False, release="d2h"),
    "layerwise": LayerwiseConfig(group_size=1, prefetch_depth=1),
    "layerwise-g2-d2-r1": LayerwiseConfig(group_size=2, prefetch_depth=2, resident_blocks=1),
    "layerwise-d3-spaced": LayerwiseConfig(group_size=1, prefetch_depth=3, resident_blocks=2,
                                           placement="spaced"),
    "disabled": DisabledConfig(),
}


@functools.cache
def engine(case: str) -> DiffusersEngine:
    model, overrides, _ = CASES[case]
    return DiffusersEngine(get_model(model), overrides=overrides)


def request(case: str) -> Request:
    return CASES[case][2]


@functools.cache
def schedule(case: str) -> Schedule:
    return engine(case).record(request(case), dtype=torch.float32)


def fresh_pipeline(case: str) -> DiffusersPipeline:
    e = engine(case)
    return e.pipeline(e.components("cpu", dtype=torch.float32), device="cpu")


@functools.cache
def reference(case: str) -> torch.Tensor:
    return fresh_pipeline(case).run(request(case))


def managed(case: str, plan: Plan, *, capacity_bytes: int = 1 << 62,
            pipe: DiffusersPipeline | None = None) -> tuple[RunResult, Execution]:
    pipe = pipe or fresh_pipeline(case)
    device = CpuDevice(unit_slots_of(pipe), capacity_bytes=capacity_bytes)
    execution = Execution(schedule(case), plan, device, pipeline=pipe, tracer=Tracer())
    return execution.run(request(case), keep_output=True), execution


def component_bytes(case: str, component: str) -> int:
    return sum(u.weight_bytes for u in schedule(case).units if u.component == component)


def test_the_wan_request_crosses_the_expert_boundary():
    experts = {c.step: c.component for c in schedule(WAN).calls if c.stage == "denoise"}
    assert experts == {0: HIGH, 1: LOW, 2: LOW}


@pytest.mark.parametrize("model", [WAN, FLUX])
@pytest.mark.parametrize("policy", ["static", "dynamic"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_managed_output_is_bitwise_equal(model: str, policy: str, strategy: str) -> None:
    plan = Plan(policy=policy, buffer_margin_bytes=1 << 10,
                components=(("default", STRATEGIES[strategy]),))
    result, execution = managed(model, plan)
    assert torch.equal(result.output, reference(model))
    assert execution.manager.leftover_units() == []
    events = execution.tracer.frame()
    assert (events.kind == "compute").sum() == len(schedule(model).calls)
    if strategy not in ("resident", "disabled"):
        assert result.h2d_bytes > 0 and (events.kind == "release").any()
    if strategy == "offload-d2h-noprefetch":
        assert result.d2h_bytes == result.h2d_bytes
        assert not (events.kind == "prefetch").any()


@pytest.mark.parametrize("model", [WAN, FLUX])
def test_disabled_policy_is_bitwise_equal_and_moves_nothing_during_the_request(model: str):
    result, execution = managed(model, Plan(policy="disabled",
                                            components=(("default", OffloadConfig()),)))
    assert torch.equal(result.output, reference(model))
    assert result.h2d_bytes == 0 and result.d2h_bytes == 0


def test_mixed_plan_on_wan_is_bitwise_equal():
    plan = Plan(policy="dynamic", components=(
        ("text_encoder", OffloadConfig(release="d2h")),
        (HIGH, LayerwiseConfig(group_size=2, prefetch_depth=1, resident_blocks=1)),
        (LOW, LayerwiseConfig(group_size=1, prefetch_depth=3)),
        ("vae", LayerwiseConfig(group_size=2, prefetch_depth=1)),
    ))
    result, execution = managed(WAN, plan)
    assert torch.equal(result.output, reference(WAN))
    assert execution.manager.leftover_units() == []


def test_dynamic_policy_under_a_budget_for_one_expert_is_bitwise_equal():
    """Unbounded, the dynamic policy brings the low-noise expert in while the high-noise one
    runs; with room for one expert (and the small components) it must not, and the high-noise
    expert leaves before the low-noise one arrives."""
    plan = Plan(policy="dynamic", buffer_margin_bytes=1 << 10,
                components=(("default", OffloadConfig()),))
    expert = component_bytes(WAN_BIG, HIGH)
    small = max(component_bytes(WAN_BIG, c) for c in ("text_encoder", "vae"))
    assert expert > small
    unbounded, _ = managed(WAN_BIG, plan)
    assert unbounded.peak_device_bytes >= 2 * expert
    capacity = 3 * expert // 2
    result, execution = managed(WAN_BIG, plan, capacity_bytes=capacity)
    assert torch.equal(result.output, reference(WAN_BIG))
    assert expert < result.peak_device_bytes <= capacity
    events = execution.tracer.frame()
    released = events[(events.kind == "release") & (events.component == HIGH)].t_s.max()
    loaded = events[(events.kind == "load") & (events.component == LOW)].t_s.min()
    assert released <= loaded


def test_running_the_wrong_expert_changes_the_output():
    """The equality above can fail: with the experts' weights swapped the managed output
    differs from the reference."""
    pipe = fresh_pipeline(WAN)
    high, low = pipe.pipe.transformer, pipe.pipe.transformer_2
    high_state = {k: v.clone() for k, v in high.state_dict().items()}
    high.load_state_dict(low.state_dict())
    low.load_state_dict(high_state)
    result, _ = managed(WAN, Plan(components=(("default", LayerwiseConfig()),)), pipe=pipe)
    ref = reference(WAN)
    assert result.output.shape == ref.shape
    assert (result.output - ref).abs().max() > 1e-3 * ref.abs().max()


def test_a_run_that_leaves_the_schedule_fails_loudly():
    pipe = fresh_pipeline(WAN)
    device = CpuDevice(unit_slots_of(pipe))
    execution = Execution(schedule(WAN), Plan(), device, pipeline=pipe)
    with pytest.raises(ScheduleMismatch, match="schedule"):
        execution.run(dataclasses.replace(WAN_REQUEST, steps=2))


def test_backends_run_the_diffusers_engine():
    plan = Plan(components=(("default", LayerwiseConfig()),))
    profile = get_profile("h100-80g")
    cpu = CpuBackend(get_model(WAN), WAN_REQUEST, profile=profile, engine=engine(WAN))
    assert torch.equal(cpu.run(plan, None, keep_output=True).output, reference(WAN))
    sim = SimBackend(get_model(WAN), WAN_REQUEST, profile=profile, engine=engine(WAN))
    result = sim.run(plan, None)
    # the simulator replays the diffusers schedule: bf16 units, the same calls
    assert [(c.component, c.unit) for c in sim.schedule.calls] == [
        (c.component, c.unit) for c in schedule(WAN).calls]
    assert result.h2d_bytes > 0 and not result.measured
