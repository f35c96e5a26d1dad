"""The manager on real tensors: every strategy and policy gives bitwise-equal outputs."""

from __future__ import annotations

import pytest
import torch

from resbench.models import all_models
from resbench.residency import (
    DisabledConfig,
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidentConfig,
)
from tests.residency.helpers import managed_run, reference_output

STRATEGY_CONFIGS = {
    "resident": ResidentConfig(),
    "offload": OffloadConfig(),
    "offload-d2h-noprefetch": OffloadConfig(prefetch=False, release="d2h"),
    "layerwise": LayerwiseConfig(group_size=1, prefetch_depth=1),
    "layerwise-g4-d2-spaced": LayerwiseConfig(group_size=4, prefetch_depth=2, resident_blocks=3,
                                              placement="spaced"),
    "disabled": DisabledConfig(),
}
POLICIES = ["static", "dynamic", "disabled"]
# The `-orig` numerics variants share their twins' architecture and residency units.
MODELS = [spec.name for spec in all_models() if not spec.name.endswith("-orig")]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("strategy", list(STRATEGY_CONFIGS))
def test_managed_output_is_bitwise_equal(model: str, policy: str, strategy: str) -> None:
    plan = Plan(policy=policy, buffer_margin_bytes=1 << 20,
                components=(("default", STRATEGY_CONFIGS[strategy]),))
    out, manager, _ = managed_run(model, plan)
    assert torch.equal(out, reference_output(model))
    assert manager.leftover_units() == []
    events = manager.tracer.frame()
    assert (events.kind == "compute").sum() == len(manager.schedule.calls)


def test_mixed_plan_on_wan_is_bitwise_equal() -> None:
    plan = Plan(policy="dynamic", components=(
        ("text_encoder", OffloadConfig(release="d2h")),
        ("transformer", LayerwiseConfig(group_size=2, prefetch_depth=1, resident_blocks=2)),
        ("transformer_2", LayerwiseConfig(group_size=1, prefetch_depth=3)),
        ("vae", OffloadConfig(prefetch=False)),
    ))
    out, manager, _ = managed_run("wan2.2-t2v-a14b", plan)
    assert torch.equal(out, reference_output("wan2.2-t2v-a14b"))
    assert manager.leftover_units() == []


def test_events_are_complete() -> None:
    plan = Plan(components=(("default", OffloadConfig()),
                            ("dit", LayerwiseConfig(group_size=1, prefetch_depth=2))))
    _, manager, _ = managed_run("wan2.2-t2v-a14b", plan)
    ev = manager.tracer.frame()
    loads = ev[ev.kind == "load"]
    assert (loads.end_s >= loads.t_s).all()
    released = set(zip(ev[ev.kind == "release"].component, ev[ev.kind == "release"].unit, strict=True))
    waited = set(zip(ev[ev.kind == "wait"].component, ev[ev.kind == "wait"].unit, strict=True))
    for row in ev[ev.kind == "prefetch"].itertuples():
        # every prefetched unit is waited on or dropped
        assert (row.component, row.unit) in waited | released
    # every load of a non-resident unit is matched by a release
    per_unit_loads = loads.groupby(["component", "unit"]).size()
    per_unit_releases = ev[ev.kind == "release"].groupby(["component", "unit"]).size()
    assert per_unit_loads.equals(per_unit_releases.reindex(per_unit_loads.index).fillna(0).astype(int))


def test_peak_memory_orders_strategies() -> None:
    """resident > offload > layerwise(group 4) > layerwise(group 1), on the DiT-heavy Wan2.1."""
    def peak(cfg) -> int:
        _, _, device = managed_run("wan2.1-t2v-14b", Plan(components=(("default", cfg),)))
        return device.peak_bytes()

    peaks = [peak(ResidentConfig()), peak(OffloadConfig()),
             peak(LayerwiseConfig(group_size=4, prefetch_depth=0)),
             peak(LayerwiseConfig(group_size=1, prefetch_depth=0))]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == 4, peaks


def test_budget_too_small_names_component_and_bytes() -> None:
    from resbench.errors import DoesNotFitError

    with pytest.raises(DoesNotFitError) as err:
        managed_run("wan2.1-t2v-1.3b", Plan(components=(("default", ResidentConfig()),)),
                    capacity_bytes=1 << 20)
    assert err.value.component is not None and err.value.missing_bytes > 0
    assert "missing" in str(err.value)


def test_plan_naming_unknown_component_is_rejected() -> None:
    from resbench.errors import InputError

    with pytest.raises(InputError, match="no component 'transformer_3'"):
        managed_run("wan2.1-t2v-1.3b", Plan(components=(("transformer_3", ResidentConfig()),)))


def test_one_setup_serves_many_requests() -> None:
    """After one setup, a second request streams as the first did — nothing one request
    tracks (uses in progress, groups handed to the next use) is left to the next — and
    gives the same output."""
    from resbench.devices.cpu import CpuDevice
    from resbench.drivers.torch_driver import TorchDriver
    from resbench.models import get_model
    from resbench.pipeline import Pipeline, unit_slots_of
    from resbench.residency import ResidencyManager
    from tests.residency.helpers import SCALE, tiny_components, tiny_request, tiny_schedule

    model = "wan2.2-t2v-a14b"
    plan = Plan(policy="dynamic", components=(("default", LayerwiseConfig(prefetch_depth=3)),))
    pipe = Pipeline(get_model(model), tiny_components(model), dtype=torch.float32, scale=SCALE)
    schedule = tiny_schedule(model)
    manager = ResidencyManager(schedule, plan, CpuDevice(unit_slots_of(pipe)), kinds=schedule.kinds)
    driver = TorchDriver(pipe, manager)
    manager.setup()
    outputs = []
    for _ in range(2):
        with driver.request():
            outputs.append(pipe.run(tiny_request(model), hooks=driver))
    driver.remove()
    events = manager.tracer.frame()
    request = (events.kind == "request_start").cumsum()
    prefetches = events[events.kind == "prefetch"].groupby(request).size()
    assert list(prefetches.index) == [1, 2] and prefetches[1] == prefetches[2] > 0
    assert torch.equal(outputs[0], reference_output(model))
    assert torch.equal(outputs[1], outputs[0])
    assert manager.leftover_units() == []
