from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict

import pytest

from resbench.report.chrome_trace import (
    COMPUTE_TID,
    GPU,
    H2D_TID,
    dumps,
    read_chrome_trace,
    run_to_chrome_trace,
    to_chrome_trace,
    write_chrome_trace,
)
from resbench.run import load_run
from tests.report.helpers import GOLDEN_META, GOLDEN_TRACE, simulate_synthetic


@pytest.fixture(scope="module")
def doc(frame):
    return to_chrome_trace(frame, GOLDEN_META)


def _ns(us: float) -> int:
    return round(us * 1000)  # as Perfetto reads µs floats (llround(ts * 1000))


def test_required_fields_and_spans(doc):
    events = doc["traceEvents"]
    assert doc["distributedInfo"] == {"rank": 0, "world_size": 1}
    for e in events:
        for key in ("name", "ph", "ts", "pid", "tid"):
            assert key in e, (key, e)
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["ts"] == round(e["ts"], 3)
        if e["ph"] == "X":
            assert e["dur"] >= 0 and "cat" in e
    names = {(e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"stream 7 (compute)", "stream 13 (H2D copy)", "residency manager"} <= names


def test_slices_on_one_track_nest(doc):
    """Perfetto drops partially overlapping slices on a thread track."""
    tracks = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append((_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"])))
    assert len(tracks) >= 3
    for spans in tracks.values():
        stack: list[tuple[int, int]] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1][1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1][1], (start, end, stack[-1])
            stack.append((start, end))


def test_kinds_as_kineto_names_them(doc, frame):
    events = doc["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    assert len(kernels) == (frame["kind"] == "compute").sum()
    assert {e["name"] for e in kernels} >= {"transformer.blocks.0", "vae.rest"}
    copies = [e for e in events if e.get("cat") == "gpu_memcpy"]
    assert {e["name"] for e in copies} == {"Memcpy HtoD (Pinned -> Device)"}
    assert all(e["tid"] == H2D_TID and e["args"]["bytes"] > 0 for e in copies)
    assert all(0 < e["args"]["memory bandwidth (GB/s)"] <= 55.0 for e in copies)
    waits = [e for e in events if e.get("cat") == "cuda_sync"]
    stalls = frame[(frame["kind"] == "wait") & (frame["stall_s"] > 0)]
    assert len(waits) == len(stalls) and all(e["name"] == "Stream Wait Event" for e in waits)
    steps = [e["name"] for e in events if e["name"].startswith("ProfilerStep#")]
    assert steps == ["ProfilerStep#0", "ProfilerStep#1", "ProfilerStep#2"]
    instants = [e for e in events if e["ph"] == "i"]
    assert all(e["s"] == "t" and "reason" in e["args"] for e in instants)
    assert {e["name"].split()[0] for e in instants} >= {"prefetch", "release", "prepare"}


def test_counters_match_the_memory_rows(doc, frame):
    mem = frame[frame["kind"] == "memory"]
    device = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["pid"] == GPU]
    pinned = [e for e in doc["traceEvents"] if e["ph"] == "C" and e["pid"] != GPU]
    assert [e["args"]["ledger"] for e in device] == mem["device_bytes"].tolist()
    assert [e["args"]["pinned"] for e in pinned] == mem["pinned_bytes"].tolist()
    assert [e["ts"] for e in device] == [round(t * 1e6, 3) for t in mem["t_s"]]


def test_flows_go_from_a_prefetch_to_its_first_compute(doc):
    outs = {e["bind_id"]: e for e in doc["traceEvents"] if e.get("flow_out")}
    ins = {e["bind_id"]: e for e in doc["traceEvents"] if e.get("flow_in")}
    assert outs and outs.keys() == ins.keys()
    for fid, src in outs.items():
        dst = ins[fid]
        assert src["args"]["resbench"]["reason"] == "prefetch"
        assert dst["cat"] == "kernel" and dst["tid"] == COMPUTE_TID
        assert dst["name"] == f'{src["args"]["resbench"]["component"]}.{src["args"]["resbench"]["unit"]}'
        assert dst["ts"] >= src["ts"] + src["dur"] - 1e-3


def test_golden_trace_is_reproduced_byte_for_byte(tmp_path):
    """A fresh simulation of the synthetic pipeline gives exactly the committed trace.
    Regenerate after an intended change: RESBENCH_UPDATE_GOLDEN=1 pytest tests/report."""
    _, _, tracer = simulate_synthetic()
    doc = to_chrome_trace(tracer.frame(), GOLDEN_META)
    if os.environ.get("RESBENCH_UPDATE_GOLDEN"):
        write_chrome_trace(doc, GOLDEN_TRACE)
    out = write_chrome_trace(doc, tmp_path / "t.json.gz")
    again = write_chrome_trace(to_chrome_trace(tracer.frame(), GOLDEN_META), tmp_path / "u.json.gz")
    assert out.read_bytes() == again.read_bytes()
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(GOLDEN_TRACE.read_bytes()), (
        "the trace of the synthetic run changed; if the simulator, the manager or the exporter "
        "changed on purpose, regenerate: RESBENCH_UPDATE_GOLDEN=1 pytest tests/report")
    assert read_chrome_trace(GOLDEN_TRACE) == json.loads(dumps(doc))


def test_event_budget_keeps_the_ends_in_full():
    _, _, tracer = simulate_synthetic(steps=5)
    frame = tracer.frame()
    full = to_chrome_trace(frame, detail="all")
    ends = to_chrome_trace(frame, detail="ends")
    auto = to_chrome_trace(frame, max_events=10)
    assert ends == auto and len(ends["traceEvents"]) < len(full["traceEvents"])
    kernels = [e for e in ends["traceEvents"] if e.get("cat") == "kernel"]
    steps = {e["args"]["resbench"]["step"] for e in kernels if "resbench" in e["args"]}
    assert steps == {-1, 0, 4}
    assert sum("(aggregated)" in e["name"] for e in kernels) == 3
    assert "aggregated" in ends["resbench"]["detail"]
    with pytest.raises(ValueError):
        to_chrome_trace(frame, detail="some")


def test_run_export_carries_its_metadata(saved_run, tmp_path):
    run = load_run(saved_run)
    doc = run_to_chrome_trace(run)
    assert doc["resbench"]["plan"] == "synthetic-stream"
    assert doc["deviceProperties"][0]["totalGlobalMem"] == run.capacity_bytes
    path = write_chrome_trace(doc, tmp_path / "plain.json")
    assert json.loads(path.read_text()) == doc


def test_a_trace_of_another_schema_names_both_versions(tmp_path):
    from resbench.errors import InputError
    from resbench.report.chrome_trace import TRACE_SCHEMA

    schedule, _, tracer = simulate_synthetic()
    doc = to_chrome_trace(tracer.frame(), GOLDEN_META)
    assert doc["resbench"]["schema"] == TRACE_SCHEMA
    path = write_chrome_trace(doc, tmp_path / "t.json.gz")
    assert read_chrome_trace(path)["resbench"]["schema"] == TRACE_SCHEMA
    doc["resbench"]["schema"] = 9
    newer = write_chrome_trace(doc, tmp_path / "newer.json.gz")
    with pytest.raises(InputError, match=r"trace schema 9 found; this resbench reads trace schema 1"):
        read_chrome_trace(newer)
