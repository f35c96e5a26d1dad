"""A `torch.profiler` run of any pipeline (a peer mode, or a resbench plan) as resbench trace
events, so that `resbench compare` and the reports read it like a run resbench traced itself.

Input: the Chrome trace `prof.export_chrome_trace(path)` writes (a dict with
``traceEvents``, or the event list itself), recorded with `annotate_components` on: each
component's forward inside a ``resbench::<component>`` `record_function` range.

Events made (see `resbench.trace`):

* ``load`` / ``d2h`` spans from the GPU's ``gpu_memcpy`` events (``Memcpy HtoD`` /
  ``Memcpy DtoH``), with their ``bytes`` and stream ``h2d`` / ``d2h``;
* ``compute`` spans from the GPU's ``kernel`` events (on a CPU-only profile, which has no
  kernels, the annotated component ranges themselves);
* ``wait`` spans from the host's synchronizing CUDA calls (``cudaStreamSynchronize``,
  ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, blocking ``cudaMemcpy``): the host
  blocked, ``stall_s`` its duration;
* ``memory`` samples from the ``[memory]`` events of the GPU (``Total Allocated``);
* ``request_start`` / ``request_end`` around everything, ``stage_enter`` / ``stage_exit``
  around each annotated component call.

A GPU event belongs to the component whose annotated range was open on the host when the
event's launch (its CUDA runtime call, matched by ``correlation``) was made: a copy a hook
issues ahead belongs to the component that issued it. Times are seconds from the first event.
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from resbench.engines.roles import DEFAULT_ENTRIES
from resbench.trace import Tracer

PREFIX = "resbench::"
SYNC_CALLS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize",
                        "cudaEventSynchronize", "cudaMemcpy"})

#: The stage of a kind whose calls all go to one stage (VAE ranges are named by method).
STAGE_OF_KIND = {kind: entries[0][1] for kind, entries in DEFAULT_ENTRIES.items()
                 if len(entries) == 1}


class _Annotations:
    """Hook handles and wrapped methods of `annotate_components`; `remove()` undoes them."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.wrapped: list[tuple[nn.Module, str]] = []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for module, method in self.wrapped:
            module.__dict__.pop(method, None)
        self.handles, self.wrapped = [], []


def annotate_components(pipe: Any) -> _Annotations:
    """Open a ``resbench::<component>`` `record_function` range around each component's
    forward, and around a VAE's `encode` / `decode` (pipelines call those, not forward);
    `.remove()` the returned object when done."""
    out = _Annotations()
    for name, module in pipe.components.items():
        if not isinstance(module, nn.Module):
            continue
        stack: list[Any] = []

        def pre(mod: nn.Module, args: Any, _n: str = name, _s: list[Any] = stack) -> None:
            _s.append(torch.profiler.record_function(f"{PREFIX}{_n}"))
            _s[-1].__enter__()

        def post(mod: nn.Module, args: Any, out: Any, _s: list[Any] = stack) -> None:
            _s.pop().__exit__(None, None, None)

        out.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        for method in ("encode", "decode"):
            bound = getattr(module, method, None)
            if bound is None or method in module.__dict__:
                continue

            def wrapper(*args: Any, _f: Any = bound, _n: str = f"{name}.{method}",
                        **kwargs: Any) -> Any:
                with torch.profiler.record_function(f"{PREFIX}{_n}"):
                    return _f(*args, **kwargs)

            module.__dict__[method] = wrapper
            out.wrapped.append((module, method))
    return out


def read_chrome_trace(path: str | Path) -> list[dict[str, Any]]:
    """The events of a Chrome trace file (.json or .json.gz)."""
    p = Path(path)
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    doc = json.loads(raw)
    return list(doc["traceEvents"] if isinstance(doc, dict) else doc)


METHOD_STAGES = {"decode": "decode", "encode": "image_encode"}
"""Stage of a VAE range annotated as ``resbench::<component>.<method>``."""


class _Ranges:
    """Annotated component ranges on the host; `at(t)` is the innermost one open at t.
    Each span is (start, end, component, stage hint: a method's stage, else '')."""

    def __init__(self, events: Sequence[Mapping[str, Any]]) -> None:
        spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)),
                        *_component_and_stage(str(e["name"])[len(PREFIX):]))
                       for e in events if e.get("ph") == "X"
                       and e.get("cat") in ("user_annotation", "cpu_op")
                       and str(e.get("name", "")).startswith(PREFIX))
        self.spans = spans
        self.starts = [span[0] for span in spans]

    def at(self, t: float) -> str:
        i = bisect.bisect_right(self.starts, t)
        while i > 0:
            i -= 1
            start, end, name, _ = self.spans[i]
            if start <= t <= end:
                return name
        return ""


def _component_and_stage(label: str) -> tuple[str, str]:
    component, _, method = label.partition(".")
    return component, METHOD_STAGES.get(method, "")


def profile_events(events: Sequence[Mapping[str, Any]], *,
                   kinds: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The resbench trace frame (`resbench.trace.COLUMNS`) of a profile's events.
    `kinds`: component → kind (dit, text_encoder, vae), for the stage names."""
    kinds = kinds or {}
    timed = [e for e in events if "ts" in e and e.get("ph") in ("X", "i", "I")]
    if not timed:
        raise ValueError("the profile holds no timed events")
    t0 = min(float(e["ts"]) for e in timed)
    ranges = _Ranges(timed)
    launches = {e["args"]["correlation"]: float(e["ts"]) for e in timed
                if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and "correlation" in e.get("args", {})}

    def owner(e: Mapping[str, Any]) -> str:
        at = launches.get(e.get("args", {}).get("correlation"), float(e["ts"]))
        return ranges.at(at)

    def sec(us: float) -> float:
        return (us - t0) / 1e6

    rows: list[tuple[float, Any]] = []
    kernels = [e for e in timed if e.get("cat") == "kernel"]
    for e in timed:
        cat, name, ph = e.get("cat"), str(e.get("name", "")), e.get("ph")
        start, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))
        if cat == "gpu_memcpy" and ("HtoD" in name or "DtoH" in name):
            kind, stream = ("load", "h2d") if "HtoD" in name else ("d2h", "d2h")
            rows.append((start, dict(kind=kind, t=sec(start), end=sec(end), component=owner(e),
                                     stream=stream, nbytes=int(e.get("args", {}).get("bytes", 0)),
                                     reason=name)))
        elif cat == "kernel":
            rows.append((start, dict(kind="compute", t=sec(start), end=sec(end),
                                     component=owner(e), stream="compute", reason=name[:80])))
        elif cat == "cuda_runtime" and name in SYNC_CALLS and end > start:
            rows.append((start, dict(kind="wait", t=sec(start), end=sec(end), component=owner(e),
                                     stream="compute", stall=(end - start) / 1e6, reason=name)))
        elif ph in ("i", "I") and name == "[memory]":
            args = e.get("args", {})
            if int(args.get("Device Type", 0)) != 0:
                rows.append((start, dict(memory=int(args.get("Total Allocated", 0)), t=sec(start))))
    for start, end, comp, stage in ranges.spans:
        rows.append((start, dict(stage_enter=comp, stage=stage, t=sec(start))))
        rows.append((end, dict(stage_exit=comp, t=sec(end))))
        if not kernels:  # a CPU-only profile: the component's range is its compute
            rows.append((start, dict(kind="compute", t=sec(start), end=sec(end), component=comp,
                                     stream="compute", reason="cpu")))
    t_end = max(float(e["ts"]) + float(e.get("dur", 0)) for e in timed)
    tracer = Tracer()
    tracer.event("request_start", 0.0)
    for _, r in sorted(rows, key=lambda x: x[0]):
        if "memory" in r:
            tracer.memory(r["t"], r["memory"], 0)
            continue
        if "stage_enter" in r or "stage_exit" in r:
            comp = r.get("stage_enter") or r.get("stage_exit")
            tracer.stage = (r.get("stage") or STAGE_OF_KIND.get(kinds.get(comp, ""), comp)
                            if "stage_enter" in r else "")
            tracer.event("stage_enter" if "stage_enter" in r else "stage_exit", r["t"],
                         component=comp)
            continue
        tracer.event(r["kind"], r["t"], end=r["end"], component=r["component"],
                     stream=r["stream"], nbytes=r.get("nbytes", 0), reason=r.get("reason", ""),
                     stall=r.get("stall", 0.0))
    tracer.event("request_end", sec(t_end))
    return tracer.frame()


def profile_result(frame: pd.DataFrame, *, budget_bytes: int | None = None,
                   pinned_host_bytes: int = 0,
                   peak_device_bytes: int | None = None) -> dict[str, Any]:
    """The run result fields (`resbench.run`) of a converted profile."""
    spans = frame[frame["end_s"].notna()]
    compute = spans[spans["kind"] == "compute"]
    memory = frame.loc[frame["kind"] == "memory", "device_bytes"]
    end = float(frame.loc[frame["kind"] == "request_end", "t_s"].max())
    return {
        "latency_s": end,
        "compute_s": float((compute["end_s"] - compute["t_s"]).sum()),
        "stall_s": float(spans.loc[spans["kind"] == "wait", "stall_s"].sum()),
        "h2d_bytes": int(spans.loc[spans["kind"] == "load", "bytes"].sum()),
        "d2h_bytes": int(spans.loc[spans["kind"] == "d2h", "bytes"].sum()),
        "peak_device_bytes": int(peak_device_bytes if peak_device_bytes is not None
                                 else (memory.max() if len(memory) else 0)),
        "pinned_host_bytes": int(pinned_host_bytes),
        "budget_bytes": budget_bytes,
    }


def save_profile_run(path: str | Path, events: Sequence[Mapping[str, Any]], *, name: str,
                     model: str, request: Mapping[str, Any], description: str,
                     kinds: Mapping[str, str] | None = None,
                     hardware: Mapping[str, Any] | None = None, budget_bytes: int | None = None,
                     pinned_host_bytes: int = 0, peak_device_bytes: int | None = None,
                     plan: Any = None, force: bool = False) -> Path:
    """Convert `events` and save them as a run folder (`resbench.run.save_run`), which
    `resbench compare` and `resbench report` read. `plan`: the resbench plan that ran, or
    None for a peer mode: then the run carries a stand-in plan named ``peer:<name>`` whose
    description says what ran (the residency was the other library's, not a plan's)."""
    from resbench.residency.plan import Plan
    from resbench.run import save_run

    frame = profile_events(events, kinds=kinds)
    the_plan = plan if plan is not None else Plan(
        name=f"peer:{name}", description=f"stand-in: this run was made by {description}, "
                                          "not by a resbench plan")
    result = profile_result(frame, budget_bytes=budget_bytes, pinned_host_bytes=pinned_host_bytes,
                            peak_device_bytes=peak_device_bytes)
    out = save_run(path, events=frame, plan=the_plan, profile=dict(hardware or {"name": "measured"}),
                   model=model, request=dict(request), result=result,
                   device="cuda" if any(frame["stream"] == "h2d") or any(
                       frame["reason"].ne("cpu") & frame["kind"].eq("compute")) else "cpu",
                   capacity_bytes=budget_bytes, name=name, force=force,
                   extra={"source": "torch.profiler", "mode": description})
    return out["run"]
