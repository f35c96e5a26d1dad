"""Physical yardsticks: achieved copy bandwidth against the profile, latency against the
lower bound max(total compute, H2D bytes / pinned H2D bandwidth)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from resbench.analysis.breakdown import span_rows
from resbench.analysis.intervals import cover, measure
from resbench.hardware import HardwareProfile


def _rate(profile: HardwareProfile | Mapping[str, Any] | None, field: str) -> float:
    if profile is None:
        return float("nan")
    value = profile.get(field) if isinstance(profile, Mapping) else getattr(profile, field, None)
    return float(value) if value else float("nan")


def last_request(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the request a run reports: from the last of a steady-state run's two
    `request_start`s on (`RunResult.steady_state`); the whole trace of a one-request run."""
    starts = (frame["kind"] == "request_start").to_numpy().nonzero()[0]
    return frame.iloc[starts[-1]:] if len(starts) > 1 else frame


def request_window(frame: pd.DataFrame) -> tuple[float, float]:
    """(start, end) of the request in seconds: request_start → request_end (the last request's
    start: a steady-state run, `RunResult.steady_state`, traces two)."""
    start = frame.loc[frame["kind"] == "request_start", "t_s"]
    end = frame.loc[frame["kind"] == "request_end", "t_s"]
    t0 = float(start.max()) if len(start) else float(frame["t_s"].min())
    t1 = float(end.max()) if len(end) else float(frame[["t_s", "end_s"]].max().max())
    return t0, t1


def bandwidth_summary(frame: pd.DataFrame,
                      profile: HardwareProfile | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Per copy direction: bytes, copies, ``busy_s`` (the union of its copy spans, so
    back-to-back copies count once), ``achieved_bytes_per_s`` = bytes / busy_s, the
    profile's pinned ``peak_bytes_per_s`` and ``fraction_of_peak``.
    """
    rows = []
    for direction, kind, peak_field in (("h2d", "load", "h2d_pinned_bytes_per_s"),
                                        ("d2h", "d2h", "d2h_pinned_bytes_per_s")):
        spans = span_rows(frame, kind)
        nbytes = int(spans["bytes"].sum())
        busy = measure(cover(spans["t_s"].to_numpy(), spans["end_s"].to_numpy()))
        achieved = nbytes / busy if busy > 0 else float("nan")
        peak = _rate(profile, peak_field)
        rows.append({"direction": direction, "bytes": nbytes, "copies": len(spans),
                     "busy_s": busy, "achieved_bytes_per_s": achieved,
                     "peak_bytes_per_s": peak, "fraction_of_peak": achieved / peak})
    return pd.DataFrame(rows)


def lower_bound(frame: pd.DataFrame,
                profile: HardwareProfile | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row: the request's ``latency_s`` against ``lower_bound_s`` = max(``compute_s``,
    ``transfer_bound_s`` = request H2D bytes / pinned H2D bandwidth), which resource binds
    (``bound``), and ``ratio_to_bound`` (1.0 = nothing left to gain from residency).
    Copies made during one-time setup are outside the request and not counted.
    """
    t0, t1 = request_window(frame)
    compute = span_rows(frame, "compute")
    compute = compute[compute["t_s"] >= t0]
    loads = span_rows(frame, "load")
    h2d = int(loads.loc[loads["stage"] != "setup", "bytes"].sum())
    compute_s = float((compute["end_s"] - compute["t_s"]).sum())
    transfer_s = h2d / _rate(profile, "h2d_pinned_bytes_per_s") if h2d else 0.0
    bound = max(compute_s, transfer_s) if transfer_s == transfer_s else compute_s
    latency = t1 - t0
    return pd.DataFrame([{
        "latency_s": latency, "compute_s": compute_s, "h2d_bytes": h2d,
        "transfer_bound_s": transfer_s, "lower_bound_s": bound,
        "bound": "transfer" if transfer_s > compute_s else "compute",
        "ratio_to_bound": latency / bound if bound > 0 else float("nan"),
    }])
