"""Chrome Trace Event JSON that Perfetto (ui.perfetto.dev), chrome://tracing and HTA read.

Layout (integer pids and tids, named by ``M`` events):

* pid 0 — the GPU. tid 7 compute stream (``kernel`` spans named ``component.unit``, adapter
  merges as ``kernel`` spans named ``merge component+adapter`` with their reason,
  ``cuda_sync`` "Stream Wait Event" spans where compute stalled on a copy, blocking
  pageable copies); tid 13 H2D copy stream and tid 14 D2H copy stream (``gpu_memcpy``
  spans with kineto's names, ``bytes`` and ``memory bandwidth (GB/s)``); the counter
  track "device memory (bytes)".
* pid 1 — the host. tid 1 residency manager (instant decisions: prepare, prefetch,
  prefetch_skip, keep, release, evict, merge_skip, with their reasons); tid 2 stages and
  ``ProfilerStep#N`` spans (``user_annotation``, one per denoising step, as HTA expects);
  tid 3 the CUDA runtime calls that issued each GPU event (same ``correlation``); the
  counter track "pinned host memory (bytes)".

Each prefetched copy has a flow arrow (``bind_id`` with ``flow_out``/``flow_in``) to the
compute span that first used the unit. Timestamps are µs with three decimals, derived from
whole nanoseconds so that back-to-back spans on one track never overlap after rounding.
Output is deterministic: events sorted by (ts, emission order), keys sorted, gzip without
a timestamp; the same frame gives the same bytes.

Long runs: ``detail="ends"`` keeps per-unit events for the first and last denoising step
only and draws every other step as one aggregated span per component run and one per copy
stream; ``detail="auto"`` switches to it when the trace would exceed ``max_events``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from resbench.analysis import step_timeline, transfer_outcomes
from resbench.analysis.breakdown import span_rows, stage_windows
from resbench.errors import InputError

GPU, HOST = 0, 1
COMPUTE_TID, H2D_TID, D2H_TID = 7, 13, 14
MANAGER_TID, STAGES_TID, RUNTIME_TID = 1, 2, 3
RUNTIME = {"kernel": "cudaLaunchKernel", "gpu_memcpy": "cudaMemcpyAsync",
           "cuda_sync": "cudaStreamWaitEvent"}
INSTANT_KINDS = ("prepare", "prefetch", "prefetch_skip", "keep", "release", "evict", "merge_skip")
MEMCPY = {
    ("load", "h2d"): "Memcpy HtoD (Pinned -> Device)",
    ("load", "compute"): "Memcpy HtoD (Pageable -> Device)",  # a pageable copy blocks compute
    ("d2h", "d2h"): "Memcpy DtoH (Device -> Pinned)",
    ("d2h", "compute"): "Memcpy DtoH (Device -> Pageable)",
}
STREAM_TID = {"compute": COMPUTE_TID, "h2d": H2D_TID, "d2h": D2H_TID}
DEFAULT_MAX_EVENTS = 1_000_000

TRACE_SCHEMA = 1
"""Version of the `resbench` block a trace carries (its events follow the Chrome format)."""


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _us(ns: int) -> float:
    return round(ns / 1000.0, 3)


class _Events:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, dict[str, Any]]] = []

    def add(self, ts_ns: int, event: dict[str, Any]) -> dict[str, Any]:
        event["ts"] = _us(ts_ns)
        self.items.append((ts_ns, len(self.items), event))
        return event

    def span(self, t0: float, t1: float, **event: Any) -> dict[str, Any]:
        a, b = _ns(t0), _ns(t1)
        event.update(ph="X", dur=_us(max(0, b - a)))
        return self.add(a, event)

    def sorted(self) -> list[dict[str, Any]]:
        return [e for _, _, e in sorted(self.items, key=lambda x: (x[0], x[1]))]


def _metadata(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    gpu = meta.get("device_label") or "GPU 0"
    names = [
        ("process_name", GPU, 0, gpu), ("process_name", HOST, 0, "resbench host"),
        ("thread_name", GPU, COMPUTE_TID, "stream 7 (compute)"),
        ("thread_name", GPU, H2D_TID, "stream 13 (H2D copy)"),
        ("thread_name", GPU, D2H_TID, "stream 14 (D2H copy)"),
        ("thread_name", HOST, MANAGER_TID, "residency manager"),
        ("thread_name", HOST, STAGES_TID, "stages and steps"),
        ("thread_name", HOST, RUNTIME_TID, "CUDA runtime (launches)"),
    ]
    out = [{"name": n, "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": {"name": label}}
           for n, pid, tid, label in names]
    for pid, order in ((GPU, 0), (HOST, 1)):
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "ts": 0,
                    "args": {"sort_index": order}})
    for pid, tid, order in ((GPU, COMPUTE_TID, 0), (GPU, H2D_TID, 1), (GPU, D2H_TID, 2),
                            (HOST, STAGES_TID, 0), (HOST, MANAGER_TID, 1), (HOST, RUNTIME_TID, 2)):
        out.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
                    "args": {"sort_index": order}})
    return out


def _detailed_steps(frame: pd.DataFrame, detail: str, max_events: int) -> set[int] | None:
    """Steps whose per-unit events are kept; None: all of them."""
    steps = sorted(int(s) for s in frame.loc[frame["step"] >= 0, "step"].unique())
    if detail == "all" or len(steps) <= 2:
        return None
    if detail == "auto":
        estimate = int(frame["kind"].isin(("compute", "load", "wait", "d2h", "merge",
                                           *INSTANT_KINDS)).sum())
        if estimate <= max_events:
            return None
    return {steps[0], steps[-1]}


def to_chrome_trace(frame: pd.DataFrame, meta: Mapping[str, Any] | None = None, *,
                    detail: str = "auto", max_events: int = DEFAULT_MAX_EVENTS) -> dict[str, Any]:
    """The trace as a Chrome Trace Event document (a dict ready for `json.dumps`).

    `frame` is `Tracer.frame()`; `meta` is free JSON stored under the top-level
    ``resbench`` key (``device_label`` names the GPU track, ``capacity_bytes`` fills
    ``deviceProperties``). `detail` is ``all``, ``ends`` or ``auto`` (see the module doc).
    """
    if detail not in ("all", "ends", "auto"):
        raise ValueError(f"detail must be all, ends or auto, got {detail!r}")
    meta = dict(meta or {})
    keep = _detailed_steps(frame, detail, max_events)

    def kept(step: int) -> bool:
        return keep is None or step < 0 or step in keep

    ev = _Events()
    corr = iter(range(1, 1 << 62))
    outcomes = transfer_outcomes(frame)
    load_corr: dict[int, int] = {}
    flow_from: dict[int, int] = {}  # consumer row → flow id
    flow_ids = iter(range(1, 1 << 62))
    for o in outcomes.itertuples(index=False):
        if not kept(int(o.step)):
            continue
        c = next(corr)
        load_corr[int(o.row)] = c
        tid = STREAM_TID.get(o.stream, H2D_TID)
        dur = o.end_s - o.t_s
        event = ev.span(o.t_s, o.end_s, name=MEMCPY.get(("load", o.stream), MEMCPY[("load", "h2d")]),
                        cat="gpu_memcpy", pid=GPU, tid=tid, args={
                            "bytes": int(o.bytes), "device": 0, "stream": tid, "correlation": c,
                            "memory bandwidth (GB/s)": round(o.bytes / dur / 1e9, 3) if dur > 0 else 0.0,
                            "resbench": {"event": "load", "reason": o.reason, "outcome": o.outcome,
                                         "component": o.component, "unit": o.unit,
                                         "stage": o.stage, "step": int(o.step)}})
        if o.reason == "prefetch" and o.consumer_row >= 0 and kept(int(frame.at[o.consumer_row, "step"])):
            fid = next(flow_ids)
            event.update(bind_id=fid, flow_out=True)
            flow_from[int(o.consumer_row)] = fid
    waited_on = dict(zip(outcomes["wait_row"], outcomes["row"], strict=True))

    for row in span_rows(frame, ("compute", "wait", "d2h", "merge")).itertuples():
        if not kept(int(row.step)):
            continue
        res = {"component": row.component, "unit": row.unit, "stage": row.stage, "step": int(row.step)}
        if row.kind == "compute":
            c = next(corr)
            event = ev.span(row.t_s, row.end_s, name=f"{row.component}.{row.unit}", cat="kernel",
                            pid=GPU, tid=COMPUTE_TID, args={
                                "device": 0, "stream": COMPUTE_TID, "correlation": c,
                                "flops": int(row.flops), "resbench": res})
            if row.Index in flow_from:
                event.update(bind_id=flow_from[row.Index], flow_in=True)
        elif row.kind == "merge":
            ev.span(row.t_s, row.end_s, name=f"merge {row.component}+{row.unit}", cat="kernel",
                    pid=GPU, tid=COMPUTE_TID, args={
                        "device": 0, "stream": COMPUTE_TID, "correlation": next(corr),
                        "flops": int(row.flops), "bytes": int(row.bytes),
                        "resbench": {**res, "event": "merge", "adapter": row.unit,
                                     "reason": row.reason}})
        elif row.kind == "wait":
            if row.stall_s <= 0.0:
                continue  # the copy had landed: nothing to draw (its flow shows the hit)
            load = waited_on.get(int(row.Index), -1)
            ev.span(row.t_s, row.end_s, name="Stream Wait Event", cat="cuda_sync", pid=GPU,
                    tid=COMPUTE_TID, args={
                        "device": 0, "stream": COMPUTE_TID, "correlation": next(corr),
                        "wait_on_stream": H2D_TID,
                        "wait_on_cuda_event_record_corr_id": load_corr.get(load, -1),
                        "stall (ms)": round(row.stall_s * 1e3, 6), "resbench": res})
        else:
            tid = STREAM_TID.get(row.stream, D2H_TID)
            dur = row.end_s - row.t_s
            ev.span(row.t_s, row.end_s, name=MEMCPY.get(("d2h", row.stream), MEMCPY[("d2h", "d2h")]),
                    cat="gpu_memcpy", pid=GPU, tid=tid, args={
                        "bytes": int(row.bytes), "device": 0, "stream": tid, "correlation": next(corr),
                        "memory bandwidth (GB/s)": round(row.bytes / dur / 1e9, 3) if dur > 0 else 0.0,
                        "resbench": {**res, "event": "d2h", "reason": row.reason}})

    for row in frame[frame["kind"].isin(INSTANT_KINDS)].itertuples():
        if not kept(int(row.step)):
            continue
        target = f"{row.component}.{row.unit}" if row.unit else row.component
        args: dict[str, Any] = {"component": row.component, "unit": row.unit, "reason": row.reason,
                                "stage": row.stage, "step": int(row.step)}
        if row.bytes:
            args["bytes"] = int(row.bytes)
        ev.add(_ns(row.t_s), {"name": f"{row.kind} {target}", "cat": "resbench", "ph": "i",
                              "s": "t", "pid": HOST, "tid": MANAGER_TID, "args": args})

    for row in frame[frame["kind"] == "memory"].itertuples():
        ev.add(_ns(row.t_s), {"name": "device memory (bytes)", "ph": "C", "pid": GPU, "tid": 0,
                              "args": {"ledger": int(row.device_bytes)}})
        ev.add(_ns(row.t_s), {"name": "pinned host memory (bytes)", "ph": "C", "pid": HOST,
                              "tid": 0, "args": {"pinned": int(row.pinned_bytes)}})

    for w in stage_windows(frame).itertuples():
        ev.span(w.start_s, w.end_s, name=w.stage, cat="user_annotation", pid=HOST, tid=STAGES_TID,
                args={"stage": w.stage})
    for s in step_timeline(frame).itertuples():
        ev.span(s.start_s, s.end_s, name=f"ProfilerStep#{int(s.step)}", cat="user_annotation",
                pid=HOST, tid=STAGES_TID, args={
                    "stage": s.stage, "step": int(s.step), "compute_s": s.compute_s,
                    "stall_s": s.stall_s, "components": s.components})
        if not kept(int(s.step)):
            _aggregate_step(ev, frame, int(s.step), corr)

    _add_launches(ev)
    meta["detail"] = "all" if keep is None else f"steps {sorted(keep)} in full, others aggregated"
    doc: dict[str, Any] = {
        "traceEvents": _metadata(meta) + ev.sorted(),
        "displayTimeUnit": "ms",
        "schemaVersion": 1,
        "distributedInfo": {"rank": 0, "world_size": 1},
        "resbench": {"schema": TRACE_SCHEMA, **meta},
        "traceName": str(meta.get("name", "resbench")),
    }
    if meta.get("capacity_bytes"):
        doc["deviceProperties"] = [{"id": 0, "name": str(meta.get("device_label", "GPU 0")),
                                    "totalGlobalMem": int(meta["capacity_bytes"])}]
    return doc


def _add_launches(ev: _Events) -> None:
    """A zero-length runtime call on the host for each GPU event, with its correlation id:
    HTA assigns GPU work to `ProfilerStep#N` through the launch that issued it. The
    simulator keeps the host in lockstep with the device, so each launch sits at the start
    of the work it issued."""
    for ts_ns, _, e in list(ev.items):
        name = RUNTIME.get(e.get("cat", ""))
        if name is None or e.get("pid") != GPU:
            continue
        ev.add(ts_ns, {"name": name, "cat": "cuda_runtime", "ph": "X", "dur": 0.0, "pid": HOST,
                       "tid": RUNTIME_TID, "args": {"correlation": e["args"]["correlation"]}})


def _aggregate_step(ev: _Events, frame: pd.DataFrame, step: int, corr: Any) -> None:
    """One span per run of consecutive computes of one component, and per copy stream."""
    rows = frame[frame["step"] == step]
    compute = span_rows(rows, "compute")
    run = (compute["component"] != compute["component"].shift()).cumsum()
    for _, part in compute.groupby(run, sort=True):
        comp = part["component"].iloc[0]
        ev.span(part["t_s"].min(), part["end_s"].max(), name=f"{comp} ×{len(part)} (aggregated)",
                cat="kernel", pid=GPU, tid=COMPUTE_TID, args={
                    "device": 0, "stream": COMPUTE_TID, "correlation": next(corr),
                    "calls": len(part), "flops": int(part["flops"].sum()),
                    "busy (ms)": round(float((part["end_s"] - part["t_s"]).sum()) * 1e3, 6)})
    for kind, stream in (("load", "h2d"), ("d2h", "d2h")):
        copies = span_rows(rows, kind)
        copies = copies[copies["stream"] == stream]
        if copies.empty:
            continue
        tid = STREAM_TID[stream]
        ev.span(copies["t_s"].min(), copies["end_s"].max(),
                name=f"{MEMCPY[(kind, stream)]} ×{len(copies)} (aggregated)", cat="gpu_memcpy",
                pid=GPU, tid=tid, args={"device": 0, "stream": tid, "correlation": next(corr),
                                        "bytes": int(copies["bytes"].sum())})


def dumps(doc: Mapping[str, Any]) -> str:
    """Canonical JSON text: sorted keys, one space after colons (HTA finds the rank with the
    pattern `"rank":\\s+N`), none after commas. What the golden file holds."""
    return json.dumps(doc, sort_keys=True, separators=(",", ": "), allow_nan=False)


def write_chrome_trace(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write `doc` to `path`: gzipped when the name ends in ``.gz`` (no timestamp inside)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = dumps(doc).encode()
    if out.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
            fh.write(data)
        data = buf.getvalue()
    out.write_bytes(data)
    return out


def read_chrome_trace(path: str | Path) -> dict[str, Any]:
    """A trace written by `write_chrome_trace`; a resbench trace of another schema is an
    `InputError` naming both versions."""
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc = json.loads(raw)
    block = doc.get("resbench") if isinstance(doc, dict) else None
    if isinstance(block, dict) and block.get("schema", TRACE_SCHEMA) != TRACE_SCHEMA:
        raise InputError(f"{p}: trace schema {block['schema']!r} found; this resbench reads "
                         f"trace schema {TRACE_SCHEMA}")
    return doc


def trace_meta(run: Any) -> dict[str, Any]:
    """The ``resbench`` metadata block for a `resbench.run.Run`."""
    profile = run.profile or {}
    kind = "simulated " if run.device == "sim" else ""
    return {
        "name": run.name, "model": run.model, "request": run.request, "device": run.device,
        "device_label": f"GPU 0 ({kind}{profile.get('name', run.device)})",
        "hardware": profile.get("name", ""), "capacity_bytes": run.capacity_bytes,
        "plan": run.plan.name, "result": run.result, "versions": run.versions,
    }


def run_to_chrome_trace(run: Any, **kwargs: Any) -> dict[str, Any]:
    """`to_chrome_trace` of a saved run, with its metadata."""
    return to_chrome_trace(run.events, trace_meta(run), **kwargs)
