"""Side-by-side comparison of two runs, in the spirit of `asv compare`."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from resbench.analysis import RunAnalysis
from resbench.run import Run

# (metric, which way is better); "lower" for times and bytes, "higher" for hits
METRICS: tuple[tuple[str, str], ...] = (
    ("latency_s", "lower"), ("compute_s", "lower"), ("stall_s", "lower"),
    ("exposed_transfer_s", "lower"), ("h2d_bytes", "lower"), ("d2h_bytes", "lower"),
    ("peak_device_bytes", "lower"), ("pinned_host_bytes", "lower"),
    ("achieved_h2d_bytes_per_s", "higher"), ("ratio_to_bound", "lower"),
    ("prefetch_hits", "higher"), ("late_prefetches", "lower"), ("demand_loads", "lower"),
    ("unused_prefetches", "lower"), ("prefetch_skips", "lower"), ("evictions", "lower"),
)


def run_metrics(run: Run) -> dict[str, Any]:
    """The trace summary plus the run result's peak (which includes activations)."""
    out = RunAnalysis(run.events, run.profile).summary()
    out["peak_device_bytes"] = int(run.result.get("peak_device_bytes", out["peak_ledger_bytes"]))
    if "pinned_host_bytes" in run.result:
        out["pinned_host_bytes"] = int(run.result["pinned_host_bytes"])
    return out


def compare_runs(a: Run, b: Run, *, threshold_pct: float = 1.0) -> pd.DataFrame:
    """One row per metric: ``a``, ``b``, ``change_pct`` (B relative to A) and ``mark``:
    ``+`` worse, ``-`` better, blank within `threshold_pct` (as `asv compare`)."""
    ma, mb = run_metrics(a), run_metrics(b)
    rows = []
    for metric, better in METRICS:
        va, vb = ma.get(metric), mb.get(metric)
        if va is None or vb is None:
            continue
        change = (vb - va) / abs(va) * 100.0 if va else (0.0 if vb == va else math.inf)
        mark = ""
        if abs(change) > threshold_pct:
            worse = change > 0 if better == "lower" else change < 0
            mark = "+" if worse else "-"
        rows.append({"metric": metric, "a": va, "b": vb, "change_pct": change, "mark": mark})
    return pd.DataFrame(rows)


def slowdown_pct(a: Run, b: Run) -> float:
    """How much slower B's request is than A's, in percent (negative: faster)."""
    la = float(a.result.get("latency_s") or run_metrics(a)["latency_s"])
    lb = float(b.result.get("latency_s") or run_metrics(b)["latency_s"])
    return (lb - la) / la * 100.0
