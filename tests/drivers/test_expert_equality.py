"""Output equality must see which expert ran: Wan2.2 A14B on the CPU device.

Both A14B models denoise with the high-noise expert (`transformer`) while t >= boundary·1000
and with the low-noise one (`transformer_2`) after. The experts share one architecture, so
only their weights tell them apart. A 3-step request crosses the boundary in both models;
every plan must reproduce the unmanaged output bitwise on it, and the same comparison must
fail when the wrong expert runs.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from resbench.devices.cpu import CpuDevice
from resbench.drivers.torch_driver import TorchDriver
from resbench.models import get_model
from resbench.models.base import build_component, materialize
from resbench.pipeline import Pipeline, Request, step_plan, unit_slots_of
from resbench.record import record_schedule
from resbench.residency import (
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidencyManager,
    ResidentConfig,
)
from resbench.schedule import Schedule
from tests.residency.helpers import SCALE, tiny_components, tiny_request

MODELS = ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"]
HIGH, LOW = "transformer", "transformer_2"

PLANS = {
    "resident": Plan(components=(("default", ResidentConfig()),)),
    "offload": Plan(components=(("default", OffloadConfig()),)),
    "layerwise-prefetch": Plan(components=(("default", LayerwiseConfig(group_size=2,
                                                                       prefetch_depth=2)),)),
    "experts-differ": Plan(components=(
        (HIGH, ResidentConfig()),
        (LOW, LayerwiseConfig(group_size=1, prefetch_depth=3, resident_blocks=2)),
        ("default", OffloadConfig(release="d2h")))),
    # unbounded: the dynamic policy keeps both experts on the device at once
    "dynamic": Plan(policy="dynamic", buffer_margin_bytes=1 << 20,
                    components=(("default", OffloadConfig()),)),
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: threading overhead dominates and two cores are shared by the suite.
    torch.set_num_threads(1)
    yield


def request_for(model: str) -> Request:
    return dataclasses.replace(tiny_request(model), steps=3)


@functools.cache
def schedule_for(model: str) -> Schedule:
    return record_schedule(get_model(model), request_for(model), scale=SCALE, dtype=torch.float32)


@functools.cache
def reference(model: str) -> torch.Tensor:
    pipe = Pipeline(get_model(model), tiny_components(model), dtype=torch.float32, scale=SCALE)
    return pipe.run(request_for(model))


def expert_bytes(model: str) -> int:
    return sum(u.weight_bytes for u in schedule_for(model).units if u.component == HIGH)


def managed(model: str, plan: Plan, components: dict[str, torch.nn.Module],
            capacity_bytes: int = 1 << 62) -> tuple[torch.Tensor, ResidencyManager, CpuDevice]:
    pipe = Pipeline(get_model(model), components, dtype=torch.float32, scale=SCALE)
    device = CpuDevice(unit_slots_of(pipe), capacity_bytes=capacity_bytes)
    schedule = schedule_for(model)
    manager = ResidencyManager(schedule, plan, device, kinds=schedule.kinds)
    return TorchDriver(pipe, manager).run(request_for(model)), manager, device


@pytest.mark.parametrize("model", MODELS)
def test_request_runs_both_experts(model: str) -> None:
    # sigma = s·u / (1 + (s-1)·u) with u = 0.999, 0.666, 0.333:
    # T2V (shift 12, boundary 0.875): t = 999, 959, 856;  I2V (shift 5, boundary 0.9): 999, 908, 713
    spec = get_model(model)
    assert spec.dits == (HIGH, LOW)
    assert [d for _, d, _, _ in step_plan(spec, request_for(model))] == [HIGH, HIGH, LOW]
    calls = schedule_for(model).calls
    by_step = {s: {c.component for c in calls if c.step == s} for s in range(3)}
    assert by_step == {0: {HIGH}, 1: {HIGH}, 2: {LOW}}


@pytest.mark.parametrize("model", MODELS)
def test_experts_have_their_own_weights(model: str) -> None:
    comps = tiny_components(model)
    high, low = comps[HIGH].state_dict(), comps[LOW].state_dict()
    assert {k: v.shape for k, v in high.items()} == {k: v.shape for k, v in low.items()}
    matrices = [k for k, v in high.items() if v.dim() >= 2]
    assert matrices and all(not torch.equal(high[k], low[k]) for k in matrices)

    # deterministic, and keyed on the component's name rather than on its architecture
    spec = get_model(model).component(LOW)
    rebuilt = materialize(build_component(spec, SCALE)).float().state_dict()
    as_high = materialize(build_component(spec, SCALE), component=HIGH).float().state_dict()
    assert all(torch.equal(rebuilt[k], low[k]) for k in low)
    assert all(torch.equal(as_high[k], high[k]) for k in high)


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("model", MODELS)
def test_managed_output_is_bitwise_equal(model: str, plan_name: str) -> None:
    out, manager, device = managed(model, PLANS[plan_name], tiny_components(model))
    assert torch.equal(out, reference(model))
    assert manager.leftover_units() == []
    if plan_name == "dynamic":
        assert device.peak_bytes() >= 2 * expert_bytes(model)


@pytest.mark.parametrize("model", MODELS)
def test_dynamic_policy_with_room_for_one_expert_is_bitwise_equal(model: str) -> None:
    """Room for one expert (and the small components) but not two: no early prefetch of the
    second expert. Each expert has one use here, so nothing is kept and nothing evicted."""
    capacity = 3 * expert_bytes(model) // 2
    plan = Plan(policy="dynamic", buffer_margin_bytes=1 << 20,
                components=(("default", OffloadConfig()),))
    out, manager, device = managed(model, plan, tiny_components(model), capacity_bytes=capacity)
    assert torch.equal(out, reference(model))
    assert expert_bytes(model) < device.peak_bytes() <= capacity
    assert manager.leftover_units() == []


def test_dynamic_policy_evicting_the_kept_vae_is_bitwise_equal() -> None:
    """I2V uses the VAE twice (image encode, decode): the dynamic policy keeps it after the
    encode, and the first expert's activations then need its room, so it is evicted (Belady:
    its next use is the decode) and reloaded for the decode. The output stays bitwise equal."""
    model = "wan2.2-i2v-a14b"
    vae_bytes = sum(u.weight_bytes for u in schedule_for(model).units if u.component == "vae")
    # the kept VAE plus one expert leave less than the activations need (margin 1 MiB)
    capacity = expert_bytes(model) + vae_bytes + 3 * (1 << 20) // 2
    plan = Plan(policy="dynamic", buffer_margin_bytes=1 << 20,
                components=(("default", OffloadConfig()),))
    out, manager, device = managed(model, plan, tiny_components(model), capacity_bytes=capacity)
    manager.tracer.finalize(device.resolve)
    events = manager.tracer.frame()
    kept = events[events.kind.isin(["keep", "evict"])]
    assert list(zip(kept.kind, kept.component, strict=True)) == [("keep", "vae"), ("evict", "vae")]
    assert "belady" in kept.reason.iloc[1]
    assert torch.equal(out, reference(model))
    assert manager.leftover_units() == []


def _swap(comps: dict[str, torch.nn.Module]) -> None:
    high, low = comps[HIGH].state_dict(), comps[LOW].state_dict()
    comps[HIGH].load_state_dict(low)
    comps[LOW].load_state_dict(high)


def _low_runs_high(comps: dict[str, torch.nn.Module]) -> None:
    # what sharing one tensor set between the experts amounted to
    comps[LOW].load_state_dict(comps[HIGH].state_dict())


@pytest.mark.parametrize("mutation", [_swap, _low_runs_high], ids=["swapped", "low-runs-high"])
@pytest.mark.parametrize("model", MODELS)
def test_wrong_expert_changes_the_output(model: str, mutation) -> None:  # type: ignore[no-untyped-def]
    """The comparison above can fail: running the wrong expert's weights changes the output."""
    comps = tiny_components(model)
    mutation(comps)
    out, _, _ = managed(model, PLANS["layerwise-prefetch"], comps)
    ref = reference(model)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() > 1e-3 * ref.abs().max()
