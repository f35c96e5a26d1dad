"""`build_weights` gives each Wan2.2 expert its own weights, and the GPU runs can tell them apart.

The host-copy tests run anywhere (`build_weights` on the CPU, pageable). The rest need a GPU
(`pytest -m gpu`): Wan2.2 A14B (T2V and I2V) at scale 0.05 with bf16 weights and a 3-step
request (high, high, low expert), where every plan must give an output bitwise equal to the
unmanaged run and the same run with the experts' host copies swapped must not.
"""

from __future__ import annotations

import pytest
import torch

from resbench.devices.cuda import HostWeights, Weights, build_weights
from resbench.models import get_model
from resbench.models.base import unit_slots
from resbench.pipeline import Request, step_plan
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan, ResidentConfig

SCALE = 0.05
MODELS = ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"]
HIGH, LOW = "transformer", "transformer_2"

PLANS = {
    "resident": Plan(name="resident", components=(("default", ResidentConfig()),)),
    "offload": Plan(name="offload", components=(("default", OffloadConfig()),)),
    "layerwise-prefetch": Plan(name="layerwise-prefetch", components=(
        ("default", LayerwiseConfig(group_size=2, prefetch_depth=2)),)),
    "experts-differ": Plan(name="experts-differ", components=(
        (HIGH, ResidentConfig()),
        (LOW, LayerwiseConfig(group_size=1, prefetch_depth=3, resident_blocks=2)),
        ("default", OffloadConfig(release="d2h")))),
    "dynamic": Plan(name="dynamic", policy="dynamic", buffer_margin_bytes=1 << 20,
                    components=(("default", OffloadConfig()),)),
}

def experts_on_cpu(model: str, **kwargs) -> Weights:  # type: ignore[no-untyped-def]
    spec = get_model(model)
    return build_weights([spec.component(HIGH), spec.component(LOW)], scale=SCALE,
                         device="cpu", pin=False, **kwargs)


def block_units(weights: Weights) -> list[str]:
    return [u for u in unit_slots(weights.components[HIGH]) if u.startswith("blocks.")]


def host_copy(weights: Weights, component: str, unit: str) -> torch.Tensor:
    """The unit's tensors' bytes (the buffer's alignment padding is uninitialised)."""
    host = weights.host.units[(component, unit)]
    assert host.pageable is not None
    return torch.cat([v.reshape(-1).view(torch.uint8) for v in host.layout.views(host.pageable)])


@pytest.mark.parametrize("model", MODELS)
def test_each_expert_gets_its_own_host_copy(model: str) -> None:
    weights = experts_on_cpu(model)
    assert weights.shared == {}
    for unit in block_units(weights):
        high, low = host_copy(weights, HIGH, unit), host_copy(weights, LOW, unit)
        assert high.data_ptr() != low.data_ptr() and not torch.equal(high, low), unit
    again = experts_on_cpu(model)
    for key in weights.host.units:
        assert torch.equal(host_copy(again, *key), host_copy(weights, *key)), key


def test_share_identical_aliases_the_second_expert() -> None:
    """Opt-in only: the low-noise expert then holds the high-noise expert's weights."""
    weights = experts_on_cpu("wan2.2-t2v-a14b", share_identical=True)
    assert weights.shared == {LOW: HIGH}
    unit = block_units(weights)[0]
    assert weights.host.units[(LOW, unit)] is weights.host.units[(HIGH, unit)]


def swapped_experts(weights: Weights) -> Weights:
    """The same modules with the two experts' host copies exchanged (nothing re-pinned)."""
    units = {}
    for (comp, unit), host in weights.host.units.items():
        other = {HIGH: LOW, LOW: HIGH}.get(comp, comp)
        units[(other, unit)] = host
    return Weights(weights.components, HostWeights(units=units), weights.scale, weights.seed)


@pytest.fixture(scope="module", params=MODELS)
def setup(request):  # type: ignore[no-untyped-def]
    from resbench.measure import measure_unmanaged
    from resbench.record import record_schedule

    spec = get_model(request.param)
    req = Request.for_model(spec, height=64, width=64, frames=5, steps=3)
    weights = build_weights(spec.components, scale=SCALE)
    schedule = record_schedule(spec, req, scale=SCALE)
    ref = measure_unmanaged(spec, req, scale=SCALE, weights=weights, warmup=False,
                            keep_output=True)
    yield spec, req, weights, schedule, ref["output"]
    weights.host.close()


@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_plan_equals_unmanaged_across_the_boundary(setup, plan: str) -> None:  # type: ignore[no-untyped-def]
    from resbench.measure import measure_real

    spec, request, weights, schedule, ref = setup
    assert [d for _, d, _, _ in step_plan(spec, request)] == [HIGH, HIGH, LOW]
    assert {c.component for c in schedule.calls if c.step == 2} == {LOW}
    assert weights.shared == {}
    assert all(set(weights.host.units[(comp, unit)].layout.dtypes) == {torch.bfloat16}
               for comp in (HIGH, LOW) for unit in ("blocks.0", "rest"))
    res = measure_real(spec, request, PLANS[plan], budget_bytes=None, scale=SCALE, warmup=False,
                       weights=weights, schedule=schedule, keep_output=True)
    diff = (res["output"] - ref).abs().max().item()
    assert torch.equal(res["output"], ref), f"max abs diff {diff}"
    assert torch.cuda.memory_allocated() < 64 * 2**20, "device copies left behind"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_swapped_experts_change_the_output(setup) -> None:  # type: ignore[no-untyped-def]
    """The comparison above can fail: the managed run with the experts exchanged differs."""
    from resbench.measure import measure_real

    spec, request, weights, schedule, ref = setup
    res = measure_real(spec, request, PLANS["layerwise-prefetch"], budget_bytes=None,
                       scale=SCALE, warmup=False, weights=swapped_experts(weights),
                       schedule=schedule, keep_output=True)
    assert res["output"].shape == ref.shape
    assert (res["output"] - ref).abs().max() > 1e-3 * ref.abs().max()

