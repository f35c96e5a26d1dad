"""Adapter merges and snapshots in the simulator: timelines worked out by hand.

The card is `resbench.testing.synthetic.ideal_profile` (one copy engine, 1 MB copies in 1 ms
pinned, 2 ms pageable) with a compute model made round for the merge: GEMMs at 1e12 FLOP/s
and memory-bound ops at 1e12 B/s, no per-call or launch cost. The merge of `ADAPTER` into
`dit2` does 2e9 GEMM FLOPs (2 ms) and moves 1e9 bytes (1 ms): 3 ms on the compute stream,
after its 0.5 MB of factors have crossed on the copy engine (0.5 ms). Call times are given
in ms. Rows are (kind, component, unit, start ms, end ms, reason).
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from resbench.adapters import MergeCost, with_merged_copy
from resbench.drivers.replay import sim_device
from resbench.errors import InputError
from resbench.execution import Execution, RunResult
from resbench.hardware import HardwareProfile
from resbench.residency import (
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidentConfig,
    SnapshotConfig,
)
from resbench.residency.strategies import StrategyConfig
from resbench.schedule import MergeCall, Schedule
from resbench.testing.synthetic import ideal_profile, synthetic_schedule
from resbench.trace import Tracer

MB = 10**6
MS = 1e-3
ADAPTER = "distilled"
KINDS = ("load", "wait", "compute", "release", "d2h", "merge", "merge_skip")


def profile() -> HardwareProfile:
    return dataclasses.replace(ideal_profile(), gemm_flops_per_s=1e12, gemm_half_flops=0.0,
                               hbm_bytes_per_s=1e12, elementwise_efficiency=1.0,
                               kernel_launch_s=0.0)


def refine() -> tuple[Schedule, list[float]]:
    """Stage `base`: dit (1 MB rest, 2 ms). Stage `refine`: dit2 (1 MB rest, 1 ms; one 2 MB
    block, 2 ms) with `ADAPTER` merged into it before its first call."""
    schedule = synthetic_schedule(
        {"dit": {"rest": MB}, "dit2": {"rest": MB, "blocks.0": 2 * MB}},
        [("base", "dit", "rest"), ("refine", "dit2", "rest"), ("refine", "dit2", "blocks.0")])
    merge = MergeCall(index=0, before_call=1, component="dit2", adapter=ADAPTER, stage="refine",
                      linears=1, gemm_flops=2 * 10**9, memory_bytes=10**9, op_count=2,
                      adapter_bytes=MB // 2, work_bytes=MB // 2)
    return dataclasses.replace(schedule, merges=(merge,)), [2 * MS, 1 * MS, 2 * MS]


def run(schedule: Schedule, times: list[float], plan: Plan, *, capacity_bytes: int | None = None,
        card: HardwareProfile | None = None) -> tuple[RunResult, pd.DataFrame]:
    device = sim_device(schedule, card or profile(), capacity_bytes=capacity_bytes,
                        call_times_s=times)
    execution = Execution(schedule, plan, device, tracer=Tracer())
    result = execution.run()
    return result, execution.manager.tracer.frame()


def rows(frame: pd.DataFrame, kinds: tuple[str, ...] = KINDS) -> list[tuple[object, ...]]:
    out = []
    for r in frame[frame.kind.isin(kinds)].itertuples():
        end = None if pd.isna(r.end_s) else round(r.end_s / MS, 9)
        out.append((r.kind, r.component, r.unit, round(r.t_s / MS, 9), end, r.reason))
    return out


def dit2(cfg: StrategyConfig) -> Plan:
    return Plan(components=(("dit", OffloadConfig()), ("dit2", cfg)))


def test_merged_copy_resident_merges_once_at_setup() -> None:
    result, frame = run(*refine(), dit2(ResidentConfig()))
    setup = frame[frame.stage == "setup"]
    assert rows(setup) == [
        ("load", "dit2", "rest", 0.0, 2.0, "demand"),  # resident: read once, pageable
        ("load", "dit2", "blocks.0", 2.0, 6.0, "demand"),  # both issued, then waited on
        ("wait", "dit2", "rest", 6.0, 6.0, ""),
        ("wait", "dit2", "blocks.0", 6.0, 6.0, ""),
        ("merge", "dit2", ADAPTER, 6.0, 9.5, "setup"),  # factors 6 → 6.5, merge 3 ms
    ]
    assert result.setup_s == pytest.approx(9.5 * MS)
    request = frame[frame.stage != "setup"]
    assert rows(request) == [
        ("load", "dit", "rest", 9.5, 10.5, "demand"),
        ("wait", "dit", "rest", 9.5, 10.5, ""),
        ("compute", "dit", "rest", 10.5, 12.5, ""),
        ("release", "dit", "rest", 12.5, None, "after_use"),
        ("merge_skip", "dit2", ADAPTER, 12.5, None, "device copy merged"),
        ("compute", "dit2", "rest", 12.5, 13.5, ""),
        ("compute", "dit2", "blocks.0", 13.5, 15.5, ""),
    ]
    assert result.latency_s == pytest.approx(6 * MS)
    # setup: dit2 (3 MB) + the merge's factors and product (1 MB); request: dit2 + dit
    assert result.peak_device_bytes == 4 * MB
    assert result.d2h_bytes == 0


def test_snapshot_captures_the_merged_copy_at_setup_and_loads_it_after() -> None:
    result, frame = run(*refine(), dit2(SnapshotConfig()))
    snap = f"snapshot: {ADAPTER} merged"
    assert rows(frame[frame.stage == "setup"]) == [
        ("load", "dit2", "rest", 0.0, 1.0, "demand"),  # pinned: it moves every request
        ("load", "dit2", "blocks.0", 1.0, 3.0, "demand"),
        ("wait", "dit2", "rest", 0.0, 1.0, ""),
        ("wait", "dit2", "blocks.0", 1.0, 3.0, ""),
        ("merge", "dit2", ADAPTER, 3.0, 6.5, "snapshot"),
        ("d2h", "dit2", "rest", 6.5, 7.5, snap),  # the copy back: D2H at 1e9 B/s
        ("release", "dit2", "rest", 6.5, None, snap),
        ("d2h", "dit2", "blocks.0", 7.5, 9.5, snap),
        ("release", "dit2", "blocks.0", 6.5, None, snap),
    ]
    assert result.setup_s == pytest.approx(9.5 * MS)  # setup ends when the copies back land
    assert rows(frame[frame.stage != "setup"]) == [
        ("load", "dit", "rest", 9.5, 10.5, "demand"),
        ("wait", "dit", "rest", 9.5, 10.5, ""),
        ("compute", "dit", "rest", 10.5, 12.5, ""),
        ("release", "dit", "rest", 12.5, None, "after_use"),
        ("load", "dit2", "rest", 12.5, 13.5, "prefetch"),  # the merged copy
        ("load", "dit2", "blocks.0", 13.5, 15.5, "prefetch"),
        ("merge_skip", "dit2", ADAPTER, 12.5, None, "host copy merged"),
        ("wait", "dit2", "rest", 12.5, 13.5, ""),
        ("compute", "dit2", "rest", 13.5, 14.5, ""),
        ("wait", "dit2", "blocks.0", 14.5, 15.5, ""),
        ("compute", "dit2", "blocks.0", 15.5, 17.5, ""),
        ("release", "dit2", "rest", 17.5, None, "after_use"),  # unchanged since loaded: dropped
        ("release", "dit2", "blocks.0", 17.5, None, "after_use"),
    ]
    assert result.latency_s == pytest.approx(8 * MS)
    assert result.d2h_bytes == 3 * MB
    assert result.pinned_host_bytes == 4 * MB  # dit and dit2 both move


def test_reload_and_remerge_pays_the_merge_in_every_request() -> None:
    result, frame = run(*refine(), dit2(OffloadConfig()))
    assert frame[frame.stage == "setup"].kind.isin(KINDS).sum() == 0
    assert rows(frame) == [
        ("load", "dit", "rest", 0.0, 1.0, "demand"),
        ("wait", "dit", "rest", 0.0, 1.0, ""),
        ("compute", "dit", "rest", 1.0, 3.0, ""),
        ("release", "dit", "rest", 3.0, None, "after_use"),
        ("load", "dit2", "rest", 3.0, 4.0, "prefetch"),  # the base weights
        ("load", "dit2", "blocks.0", 4.0, 6.0, "prefetch"),
        ("wait", "dit2", "rest", 3.0, 4.0, ""),  # the merge needs every unit
        ("wait", "dit2", "blocks.0", 4.0, 6.0, ""),
        ("merge", "dit2", ADAPTER, 6.0, 9.5, "first"),
        ("compute", "dit2", "rest", 9.5, 10.5, ""),
        ("compute", "dit2", "blocks.0", 10.5, 12.5, ""),
        ("release", "dit2", "rest", 12.5, None, "after_use"),  # the merged copy is dropped
        ("release", "dit2", "blocks.0", 12.5, None, "after_use"),
    ]
    merge = frame[frame.kind == "merge"].iloc[0]
    assert (merge.bytes, merge.flops, merge.stream) == (MB // 2, 2 * 10**9, "compute")
    assert result.latency_s == pytest.approx(12.5 * MS)
    assert result.compute_s == pytest.approx(8 * MS)  # 5 ms of calls + 3 ms of merge (not its copy)
    assert result.setup_s == 0.0
    assert result.peak_device_bytes == 4 * MB  # dit2 + factors and product during the merge


def test_the_three_choices_rank_by_what_each_request_pays() -> None:
    latency = {name: run(*refine(), dit2(cfg))[0].latency_s
               for name, cfg in (("resident", ResidentConfig()), ("snapshot", SnapshotConfig()),
                                 ("re-merge", OffloadConfig()))}
    assert latency["resident"] < latency["snapshot"] < latency["re-merge"]


def test_a_merge_that_does_not_fit_names_itself() -> None:
    from resbench.errors import DoesNotFitError

    with pytest.raises(DoesNotFitError, match=f"merge of {ADAPTER} into dit2"):
        run(*refine(), dit2(OffloadConfig()), capacity_bytes=int(3.5 * MB))


def test_layerwise_cannot_stream_a_merged_component() -> None:
    with pytest.raises(InputError, match="dit2 cannot be layerwise.*resident, offload, disabled, "
                                         "snapshot"):
        run(*refine(), dit2(LayerwiseConfig()))


def test_a_component_run_before_its_merge_is_refused() -> None:
    schedule, times = refine()
    early = dataclasses.replace(schedule.merges[0], component="dit", before_call=1)
    with pytest.raises(InputError, match="dit runs .* before distilled is merged into it"):
        run(dataclasses.replace(schedule, merges=(early,)), times, dit2(OffloadConfig()))


def test_a_d2h_released_component_is_prefetched_and_its_load_hidden() -> None:
    """sglang's reviewer: a component released by D2H must stay prefetchable. dit (1 MB) is
    copied back after stage a (dynamic keeps it only if the 5 MB encoder fits beside it: it
    does not, with a 6 MB card and 0.5 MB margin); while `small` computes (4 ms) its next use
    is prefetched early, reading the host copy the D2H wrote, and lands before it is needed."""
    schedule = synthetic_schedule(
        {"dit": {"rest": MB}, "te": {"rest": 5 * MB}, "small": {"rest": MB // 2}},
        [("a", "dit", "rest"), ("b", "te", "rest"), ("c", "small", "rest"), ("d", "dit", "rest")],
        kinds={"te": "text_encoder", "small": "vae"})
    plan = Plan(policy="dynamic", buffer_margin_bytes=MB // 2,
                components=(("default", OffloadConfig()),
                            ("dit", OffloadConfig(release="d2h"))))
    result, frame = run(schedule, [1 * MS, 1 * MS, 4 * MS, 1 * MS], plan,
                        capacity_bytes=6 * MB, card=ideal_profile())
    dit = frame[frame.component == "dit"]
    assert rows(dit, ("load", "wait", "compute", "d2h")) == [
        ("load", "dit", "rest", 0.0, 1.0, "demand"),
        ("wait", "dit", "rest", 0.0, 1.0, ""),
        ("compute", "dit", "rest", 1.0, 2.0, ""),
        ("d2h", "dit", "rest", 2.0, 3.0, "d2h"),
        ("load", "dit", "rest", 9.0, 10.0, "prefetch"),  # issued as `small` starts (9 ms)
        ("wait", "dit", "rest", 13.0, 13.0, ""),  # landed at 10 ms: hidden
        ("compute", "dit", "rest", 13.0, 14.0, ""),
        ("d2h", "dit", "rest", 14.0, 15.0, "d2h"),
    ]
    prefetches = dit[dit.kind == "prefetch"]
    assert list(prefetches.t_s / MS) == [pytest.approx(9.0)] and list(prefetches.bytes) == [MB]
    assert list(dit[dit.kind == "prepare"].reason) == ["cold", "prefetched"]
    assert dit[dit.kind == "wait"].stall_s.iloc[-1] == 0.0
    assert result.latency_s == pytest.approx(14 * MS)


def test_a_stage_rerun_with_a_lora_gets_a_merged_copy_of_the_dit() -> None:
    """LTX-2's shape: one DiT called in `base` and again in `refine`, where the LoRA is merged.
    `with_merged_copy` gives the refine calls their own component, a copy of the DiT's units,
    and the merge before its first call; the base calls keep the base weights."""
    schedule = synthetic_schedule(
        {"dit": {"rest": MB, "blocks.0": 2 * MB}},
        [("base", "dit", "rest"), ("base", "dit", "blocks.0"),
         ("refine", "dit", "rest"), ("refine", "dit", "blocks.0")])
    cost = MergeCost(linears=1, gemm_flops=2 * 10**9, gemm_fp32_flops=0, memory_bytes=10**9,
                     op_count=2, adapter_bytes=MB // 2, work_bytes=MB // 2)
    split = with_merged_copy(schedule, "dit", "refine", "dit2", ADAPTER, cost)
    assert [(c.stage, c.component) for c in split.calls] == [
        ("base", "dit"), ("base", "dit"), ("refine", "dit2"), ("refine", "dit2")]
    assert split.component_units("dit2") == [dataclasses.replace(u, component="dit2")
                                             for u in split.component_units("dit")]
    assert split.kinds == {"dit": "dit", "dit2": "dit"}
    assert split.merged == {"dit2": (ADAPTER,)} and split.merges[0].before_call == 2
    times = [1 * MS, 2 * MS, 1 * MS, 2 * MS]
    resident, _ = run(split, times, Plan(components=(("default", ResidentConfig()),)))
    remerge, frame = run(split, times, Plan(components=(("default", OffloadConfig()),)))
    assert resident.latency_s == pytest.approx(6 * MS)  # four calls, nothing moves
    # dit: copies 0 → 3 ms under its calls (done at 5 ms); dit2 prefetched at dit's release
    # (5 → 8 ms), merged (factors 8 → 8.5, GEMMs and adds 8.5 → 11.5), then its calls
    assert list(frame[frame.kind == "merge"].t_s / MS) == [pytest.approx(8.0)]
    assert remerge.latency_s == pytest.approx(14.5 * MS)
    with pytest.raises(ValueError, match="not called in stage 'decode'"):
        with_merged_copy(schedule, "dit", "decode", "dit2", ADAPTER, cost)


def test_chrome_trace_shows_merges_skips_and_snapshot_copies_with_bytes_and_reasons() -> None:
    from resbench.report.chrome_trace import COMPUTE_TID, D2H_TID, to_chrome_trace

    _, remerge = run(*refine(), dit2(OffloadConfig()))
    _, snapshot = run(*refine(), dit2(SnapshotConfig()))
    merge = [e for e in to_chrome_trace(remerge)["traceEvents"]
             if e.get("name") == f"merge dit2+{ADAPTER}"]
    assert [(e["tid"], e["ts"], e["dur"]) for e in merge] == [(COMPUTE_TID, 6000.0, 3500.0)]
    assert (merge[0]["args"]["flops"], merge[0]["args"]["bytes"],
            merge[0]["args"]["resbench"]["reason"]) == (2 * 10**9, MB // 2, "first")
    events = to_chrome_trace(snapshot)["traceEvents"]
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and e["tid"] == D2H_TID]
    assert [(e["args"]["bytes"], e["args"]["resbench"]["reason"]) for e in copies] == [
        (MB, f"snapshot: {ADAPTER} merged"), (2 * MB, f"snapshot: {ADAPTER} merged")]
    skips = [e for e in events if e.get("name") == "merge_skip dit2.distilled"]
    assert [e["args"]["reason"] for e in skips] == ["host copy merged"]
