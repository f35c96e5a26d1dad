"""Layerwise `keep_resident`: resident blocks kept from one request to the next, scored on
the steady state (the second of two back-to-back requests, memory over both).

Timelines on the ideal card of `resbench.testing.synthetic` (1 MB copies in 1 ms, nothing
else modelled), call times in ms: each expected time is a sum of the inputs.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from resbench.analysis import stage_breakdown
from resbench.analysis.bounds import last_request, request_window
from resbench.analysis.budget import needed_budget_bytes
from resbench.analysis.timeline import activation_timeline
from resbench.drivers.replay import sim_device, simulate
from resbench.errors import DoesNotFitError, InputError
from resbench.execution import Execution, SimBackend
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan
from resbench.residency.plan import plan_from_dict
from resbench.schedule import Schedule
from resbench.testing.synthetic import ideal_profile, synthetic_schedule
from resbench.trace import Tracer
from tests.drivers.test_replay import rows

MB = 10**6
MS = 1e-3
KINDS = ("request_start", "load", "wait", "compute", "release", "keep", "request_end")


def encoder_then_dit(encoder_bytes: int = MB) -> tuple[Schedule, list[float]]:
    """A text encoder (2 ms), then a DiT: 1 MB rest (0.5 ms), two 2 MB blocks (3 ms each)."""
    schedule = synthetic_schedule(
        {"te": {"rest": encoder_bytes}, "dit": {"rest": MB, "blocks.0": 2 * MB,
                                                "blocks.1": 2 * MB}},
        [("encode", "te", "rest"), ("denoise", "dit", "rest"), ("denoise", "dit", "blocks.0"),
         ("denoise", "dit", "blocks.1")],
        kinds={"te": "text_encoder"})
    return schedule, [2 * MS, 0.5 * MS, 3 * MS, 3 * MS]


def keep_plan(keep: bool = True) -> Plan:
    return Plan(components=(
        ("te", OffloadConfig(prefetch=False)),
        ("dit", LayerwiseConfig(prefetch_depth=0, resident_blocks=1, keep_resident=keep))))


def run(schedule: Schedule, times: list[float], plan: Plan, capacity_bytes: int | None = None,
        steady_state: bool | None = None) -> tuple[object, Execution]:
    device = sim_device(schedule, ideal_profile(), capacity_bytes=capacity_bytes,
                        call_times_s=times)
    ex = Execution(schedule, plan, device, tracer=Tracer())
    return ex.run(steady_state=steady_state), ex


def test_the_second_request_finds_the_kept_block_and_skips_its_load() -> None:
    result, ex = run(*encoder_then_dit(), keep_plan())
    first = [
        ("request_start", "", "", 0.0, None),
        ("load", "te", "rest", 0.0, 1.0),
        ("wait", "te", "rest", 0.0, 1.0),
        ("compute", "te", "rest", 1.0, 3.0),
        ("release", "te", "rest", 3.0, None),
        ("load", "dit", "rest", 3.0, 4.0),  # prefetched at the encoder's release
        ("load", "dit", "blocks.0", 4.0, 6.0),  # the resident block, with the use
        ("wait", "dit", "rest", 3.0, 4.0),
        ("compute", "dit", "rest", 4.0, 4.5),
        ("wait", "dit", "blocks.0", 4.5, 6.0),
        ("compute", "dit", "blocks.0", 6.0, 9.0),
        ("load", "dit", "blocks.1", 9.0, 11.0),  # streamed, nothing ahead (depth 0)
        ("wait", "dit", "blocks.1", 9.0, 11.0),
        ("compute", "dit", "blocks.1", 11.0, 14.0),
        ("release", "dit", "blocks.1", 14.0, None),
        ("release", "dit", "rest", 14.0, None),
        ("keep", "dit", "blocks.0", 14.0, None),  # not released at the request's end
        ("request_end", "", "", 14.0, None),
    ]
    second = [
        ("request_start", "", "", 14.0, None),
        ("load", "te", "rest", 14.0, 15.0),
        ("wait", "te", "rest", 14.0, 15.0),
        ("compute", "te", "rest", 15.0, 17.0),
        ("release", "te", "rest", 17.0, None),
        ("load", "dit", "rest", 17.0, 18.0),
        ("keep", "dit", "blocks.0", 17.0, None),  # found on the device: no load, no wait
        ("wait", "dit", "rest", 17.0, 18.0),
        ("compute", "dit", "rest", 18.0, 18.5),
        ("compute", "dit", "blocks.0", 18.5, 21.5),
        ("load", "dit", "blocks.1", 21.5, 23.5),
        ("wait", "dit", "blocks.1", 21.5, 23.5),
        ("compute", "dit", "blocks.1", 23.5, 26.5),
        ("release", "dit", "blocks.1", 26.5, None),
        ("release", "dit", "rest", 26.5, None),
        ("keep", "dit", "blocks.0", 26.5, None),
        ("request_end", "", "", 26.5, None),
    ]
    frame = ex.manager.tracer.frame()
    assert rows(frame, KINDS) == first + second
    keeps = frame[frame.kind == "keep"]
    assert list(keeps.reason) == ["keep_resident: for the next request",
                                  "kept from the last request",
                                  "keep_resident: for the next request"]
    assert result.steady_state
    assert result.cold_latency_s == pytest.approx(14 * MS)
    assert result.latency_s == pytest.approx(12.5 * MS)  # the second request's
    assert result.compute_s == pytest.approx(8.5 * MS)
    assert result.stall_s == pytest.approx(4 * MS)  # 1 (te) + 1 (rest) + 2 (blocks.1)
    assert result.h2d_bytes == 4 * MB  # te 1 + rest 1 + blocks.1 2: not the kept block
    assert result.stage_latency_s == pytest.approx({"encode": 3 * MS, "denoise": 9.5 * MS})
    assert result.peak_device_bytes == 5 * MB  # the DiT's use: rest 1 + kept 2 + slot 2
    assert ex.manager.latencies_s == pytest.approx([14 * MS, 12.5 * MS])


def test_without_the_option_each_request_is_cold_and_scored_alone() -> None:
    schedule, times = encoder_then_dit()
    cold, ex = run(schedule, times, keep_plan(keep=False))
    assert not cold.steady_state and cold.cold_latency_s is None
    assert cold.latency_s == pytest.approx(14 * MS)
    assert len(ex.manager.latencies_s) == 1
    # two requests without the option: the second repeats the first
    again, ex = run(schedule, times, keep_plan(keep=False), steady_state=True)
    assert ex.manager.latencies_s == pytest.approx([14 * MS, 14 * MS])
    assert again.h2d_bytes == 6 * MB
    # the option does nothing without resident blocks
    none_kept = Plan(components=(("dit", LayerwiseConfig(keep_resident=True)),))
    assert not none_kept.keeps_across_requests
    assert not dataclasses.replace(keep_plan(), policy="disabled").keeps_across_requests


def test_kept_blocks_and_the_next_requests_encoder_past_the_budget_do_not_fit() -> None:
    """A 4 MB encoder and the DiT (5 MB in use) each fit 5 MB alone, so one request fits; the
    second request's encoder meets the kept 2 MB block: 6 MB, out of memory, as on a card."""
    schedule, times = encoder_then_dit(encoder_bytes=4 * MB)
    cold, _ = run(schedule, times, keep_plan(keep=False), capacity_bytes=5 * MB)
    assert cold.peak_device_bytes == 5 * MB
    with pytest.raises(DoesNotFitError, match="second of two back-to-back requests") as err:
        run(schedule, times, keep_plan(), capacity_bytes=5 * MB)
    assert (err.value.component, err.value.unit) == ("te", "rest")
    assert err.value.missing_bytes == MB
    fits, _ = run(schedule, times, keep_plan(), capacity_bytes=6 * MB)
    assert fits.peak_device_bytes == 6 * MB  # te 4 + the kept block 2, in the second request


def test_the_option_round_trips_through_toml_and_is_checked() -> None:
    plan = keep_plan()
    again = plan_from_dict(plan.to_dict())
    assert again == dataclasses.replace(plan, name=again.name)
    assert 'keep_resident = true' in plan.to_toml()
    assert 'keep_resident' not in keep_plan(keep=False).to_toml()  # plans without it as before
    with pytest.raises(InputError, match=r"components\.dit\.keep_resident: must be true or false"):
        plan_from_dict({"components": {"dit": {"strategy": "layerwise", "keep_resident": 1}}})
    with pytest.raises(InputError, match="keep_resident"):
        Plan(components=(("dit", LayerwiseConfig(keep_resident="yes")),))  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------

def five_blocks() -> tuple[Schedule, list[float]]:
    """An encoder (two 6 MB blocks) and a DiT of five 4 MB blocks run three times."""
    dit = {"rest": MB} | {f"blocks.{i}": 4 * MB for i in range(5)}
    te = {"rest": MB, "blocks.0": 6 * MB, "blocks.1": 6 * MB}
    calls = ([("encode", "te", u) for u in te]
             + [("denoise", "dit", u) for _ in range(3) for u in dit])
    schedule = synthetic_schedule({"te": te, "dit": dit}, calls, kinds={"te": "text_encoder"},
                                  activation_bytes={("dit", u): MB for u in dit})
    return schedule, [2e-4 if c.unit == "rest" else 1e-3 for c in schedule.calls]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(group=st.integers(1, 2), depth=st.integers(0, 2), resident=st.integers(1, 5),
       placement=st.sampled_from(["prefix", "spaced"]), te=st.sampled_from(["offload", "layerwise"]),
       slack_mb=st.sampled_from([-1, 0, 2, 4, 8, 16]))
def test_keeping_blocks_moves_exactly_their_bytes_less_and_is_never_slower(
        group: int, depth: int, resident: int, placement: str, te: str, slack_mb: int) -> None:
    """Static policy, the same plan with and without the option, both run twice: the steady
    request with kept blocks copies exactly their bytes less, is no slower, peaks no lower;
    when it fits, the kept bytes fit the budget; when the plan without the option does not
    fit, neither does the one with it. Budgets around what the plan without the option needs."""
    schedule, times = five_blocks()
    profile = ideal_profile()
    te_cfg = OffloadConfig() if te == "offload" else LayerwiseConfig(prefetch_depth=1)

    def plan(keep: bool) -> Plan:
        return Plan(components=(("te", te_cfg), ("dit", LayerwiseConfig(
            group_size=group, prefetch_depth=depth, resident_blocks=resident,
            placement=placement, keep_resident=keep))))  # type: ignore[arg-type]

    need = needed_budget_bytes(schedule, plan(False), profile, call_times_s=times)
    assert need is not None
    capacity = need + slack_mb * MB
    try:
        base = simulate(schedule, plan(False), profile, capacity_bytes=capacity,
                        call_times_s=times, steady_state=True)
    except DoesNotFitError:
        event("neither fits")
        with pytest.raises(DoesNotFitError):
            simulate(schedule, plan(True), profile, capacity_bytes=capacity, call_times_s=times)
        return
    try:
        kept = simulate(schedule, plan(True), profile, capacity_bytes=capacity,
                        call_times_s=times)
    except DoesNotFitError:
        event("only the plan without kept blocks fits")
        return  # the kept blocks beside the encoder: a peak the plan without them never has
    event("both fit")
    assert kept.steady_state and kept.cold_latency_s is not None
    kept_bytes = 4 * MB * resident
    assert kept_bytes <= kept.peak_device_bytes <= capacity
    assert kept.h2d_bytes == base.h2d_bytes - kept_bytes
    assert kept.latency_s <= base.latency_s + 1e-12
    assert kept.latency_s <= kept.cold_latency_s + 1e-12
    assert kept.peak_device_bytes >= base.peak_device_bytes


def test_analyses_of_a_steady_state_trace_read_its_second_request() -> None:
    schedule, times = encoder_then_dit()
    _, ex = run(schedule, times, keep_plan())
    frame = ex.manager.tracer.frame()
    second = last_request(frame)
    assert list(second.kind).count("request_start") == 1
    assert request_window(frame) == pytest.approx((14 * MS, 26.5 * MS))
    stages = stage_breakdown(second).set_index("stage")
    assert stages.wall_s.to_dict() == pytest.approx({"encode": 3 * MS, "denoise": 9.5 * MS})
    # the activation timeline pairs both requests' compute spans with the schedule's calls
    assert len(activation_timeline(frame, schedule)) == 2 * len(schedule.calls)
    assert len(activation_timeline(second, schedule)) == len(schedule.calls)


def test_a_backend_told_to_reports_the_steady_state_of_any_plan() -> None:
    """`resbench profile --steady-state`: a plan without kept blocks, its second request."""
    schedule, times = encoder_then_dit()
    spec = get_model("wan2.1-1.3b")  # not built: the schedule is given
    backend = SimBackend(spec, Request.for_model(spec), profile=ideal_profile(),
                         schedule=schedule, call_times_s=times)
    assert not backend.run(keep_plan(keep=False), None).steady_state
    backend.steady_state = True
    second = backend.run(keep_plan(keep=False), None)
    assert second.steady_state and second.cold_latency_s == pytest.approx(14 * MS)
    assert second.latency_s == pytest.approx(14 * MS) and second.h2d_bytes == 6 * MB
