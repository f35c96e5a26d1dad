"""The pinning rule, worked by hand, and the tuner's estimate against what the manager pins."""

from __future__ import annotations

import pytest

from resbench.drivers.replay import sim_device
from resbench.execution import Execution
from resbench.residency import (
    DisabledConfig,
    HostOptions,
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidentConfig,
)
from resbench.residency.pinning import pinned_units
from resbench.schedule import Schedule
from resbench.testing.synthetic import ideal_profile, synthetic_schedule
from resbench.tune.objective import Evaluator

MB = 10**6


def three_components() -> Schedule:
    """A 1 MB text encoder, a DiT `transformer` (1 MB rest, two 2 MB blocks), a 1 MB VAE: 7 MB."""
    return synthetic_schedule(
        {"te": {"rest": MB}, "transformer": {"rest": MB, "blocks.0": 2 * MB, "blocks.1": 2 * MB},
         "vae": {"rest": MB}},
        [("encode", "te", "rest"), ("denoise", "transformer", "rest"), ("denoise", "transformer", "blocks.0"),
         ("denoise", "transformer", "blocks.1"), ("decode", "vae", "rest")],
        kinds={"te": "text_encoder", "vae": "vae"})


def pinned_keys(plan: Plan) -> list[tuple[str, str]]:
    return [(u.component, u.name) for u in pinned_units(plan, three_components())]


OFFLOAD_ALL = (("default", OffloadConfig()),)


def test_moved_units_are_pinned_first_fit_within_the_cap() -> None:
    """Cap 3.5 MB: te.rest (1 MB, 1 in all) and transformer.rest (2 in all) fit; either 2 MB block
    would make 4: both stay pageable; vae.rest still fits after them (3 in all)."""
    plan = Plan(components=OFFLOAD_ALL, host=HostOptions(pinned_budget_bytes=3_500_000))
    assert pinned_keys(plan) == [("te", "rest"), ("transformer", "rest"), ("vae", "rest")]
    assert len(pinned_keys(Plan(components=OFFLOAD_ALL))) == 5  # no cap: every unit


def test_only_components_that_move_are_pinned() -> None:
    plan = Plan(components=(("te", ResidentConfig()), ("transformer", LayerwiseConfig()),
                            ("vae", DisabledConfig())))
    assert pinned_keys(plan) == [("transformer", "rest"), ("transformer", "blocks.0"),
                              ("transformer", "blocks.1")]
    assert pinned_keys(Plan(policy="disabled", components=OFFLOAD_ALL)) == []
    assert pinned_keys(Plan(components=OFFLOAD_ALL, host=HostOptions(pinned=False))) == []


PLANS = {  # plan, pinned bytes worked out by hand
    "offload": (Plan(components=OFFLOAD_ALL), 7 * MB),
    "offload-cap": (Plan(components=OFFLOAD_ALL, host=HostOptions(pinned_budget_bytes=3_500_000)),
                    3 * MB),  # as in the first test
    "mixed": (Plan(policy="dynamic", components=(
        ("text_encoder", ResidentConfig()), ("dit", LayerwiseConfig(prefetch_depth=2)),
        ("vae", DisabledConfig()))), 5 * MB),  # the DiT only
    "group-entry-cap": (Plan(components=(("default", ResidentConfig()),
                                         ("dit", OffloadConfig(prefetch=False))),
                             host=HostOptions(pinned_budget_bytes=4 * MB)),
                        3 * MB),  # the DiT group: rest 1, blocks.0 2; blocks.1 would make 5
    "cap-zero": (Plan(components=OFFLOAD_ALL, host=HostOptions(pinned_budget_bytes=0)), 0),
    "pageable": (Plan(components=OFFLOAD_ALL, host=HostOptions(pinned=False)), 0),
    "disabled-policy": (Plan(policy="disabled", components=OFFLOAD_ALL), 0),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_the_tuners_estimate_is_what_the_manager_pins(name: str) -> None:
    plan, expected = PLANS[name]
    schedule = three_components()
    driver = Execution(schedule, plan, sim_device(schedule, ideal_profile(), call_times_s=[0.0] * 5))
    driver.manager.setup()
    evaluator = Evaluator(schedule, ideal_profile(), budget_bytes=10**12, host_budget_bytes=0)
    assert driver.device.pinned_bytes() == evaluator.pinned_estimate(plan) == expected
