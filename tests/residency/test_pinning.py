"""The pinning rule, worked by hand, and the tuner's estimate against what the manager pins."""

from __future__ import annotations

import pytest

from resbench.drivers.replay import sim_device, simulate
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


def three_forwards() -> Schedule:
    """A 1 MB text encoder, a DiT (rest 1 MB, blocks 2, 2, 1 MB) run three times in one use,
    a 1 MB VAE: 8 MB."""
    blocks = ("blocks.0", "blocks.1", "blocks.2")
    return synthetic_schedule(
        {"te": {"rest": MB}, "transformer": {"rest": MB, "blocks.0": 2 * MB,
                                             "blocks.1": 2 * MB, "blocks.2": MB},
         "vae": {"rest": MB}},
        [("encode", "te", "rest"),
         *[("denoise", "transformer", u) for _ in range(3) for u in ("rest", *blocks)],
         ("decode", "vae", "rest")],
        kinds={"te": "text_encoder", "vae": "vae"})


LAYERWISE_ONE_RESIDENT = (("default", OffloadConfig(prefetch=False)),
                          ("dit", LayerwiseConfig(prefetch_depth=0, resident_blocks=1)))


def test_the_cap_goes_to_the_units_copied_most() -> None:
    """Copies per request: te 1, transformer rest 1 (one use), blocks.0 1 (resident),
    blocks.1 and blocks.2 3 each (streamed, one group each, visited every forward), vae 1.
    Cap 3 MB: blocks.1 (2 MB) and blocks.2 (1 MB) fill it. First fit in schedule order would
    have pinned te, the rest and blocks.2: 5 MB of copies a request at the pinned rate, not 9."""
    from resbench.residency.pinning import copies_per_request

    schedule = three_forwards()
    plan = Plan(components=LAYERWISE_ONE_RESIDENT, host=HostOptions(pinned_budget_bytes=3 * MB))
    assert copies_per_request(plan, schedule) == {
        ("te", "rest"): 1, ("transformer", "rest"): 1, ("transformer", "blocks.0"): 1,
        ("transformer", "blocks.1"): 3, ("transformer", "blocks.2"): 3, ("vae", "rest"): 1}
    assert [(u.component, u.name) for u in pinned_units(plan, schedule)] == [
        ("transformer", "blocks.1"), ("transformer", "blocks.2")]


def test_the_simulator_prices_each_unit_pinned_or_pageable() -> None:
    """No compute, no prefetch: every copy runs alone, and the request lasts the sum of its
    copies, pinned at 1 ms/MB and pageable at 2 ms/MB (ideal profile). Copies: te 1 MB, the
    DiT's rest 1 and blocks.0 2 (resident, once), blocks.1 + blocks.2 3 MB × 3, vae 1: 14 MB.
    Cap 3 MB: the 9 MB of streamed blocks pinned (9 ms), 5 MB pageable (10 ms): 19 ms.
    Uncapped: 14 ms; pageable: 28 ms."""
    schedule = three_forwards()

    def latency_ms(host: HostOptions) -> float:
        plan = Plan(components=LAYERWISE_ONE_RESIDENT, host=host)
        return simulate(schedule, plan, ideal_profile(),
                        call_times_s=[0.0] * len(schedule.calls)).latency_s * 1e3

    assert latency_ms(HostOptions(pinned_budget_bytes=3 * MB)) == pytest.approx(19.0)
    assert latency_ms(HostOptions()) == pytest.approx(14.0)
    assert latency_ms(HostOptions(pinned=False)) == pytest.approx(28.0)
