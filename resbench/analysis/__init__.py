"""Analyses of a run's trace: every function takes `Tracer.frame()` rows and returns a
DataFrame with units in its column names; drawing lives in `resbench.report`.

`RunAnalysis` is the facade (as HTA's `TraceAnalysis`): one object per trace, one method
per question. The functions are importable on their own too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from resbench.analysis.bounds import bandwidth_summary, lower_bound, request_window
from resbench.analysis.breakdown import (
    component_breakdown,
    event_counts,
    stage_breakdown,
    stage_windows,
    transfer_outcomes,
)
from resbench.analysis.timeline import (
    activation_timeline,
    memory_timeline,
    resident_at_peak,
    step_timeline,
)
from resbench.hardware import HardwareProfile
from resbench.schedule import Schedule

__all__ = [
    "RunAnalysis", "activation_timeline", "bandwidth_summary", "component_breakdown", "event_counts", "lower_bound",
    "memory_timeline", "request_window", "resident_at_peak", "stage_breakdown",
    "stage_windows", "step_timeline", "transfer_outcomes",
]


class RunAnalysis:
    """All analyses of one trace. `profile` (a `HardwareProfile` or its dict) is needed only
    for the yardsticks (`bandwidth`, `lower_bound`), `schedule` only for activation memory
    (`activations`, and a peak that includes them); results are computed once and cached."""

    def __init__(self, frame: pd.DataFrame,
                 profile: HardwareProfile | Mapping[str, Any] | None = None,
                 schedule: Schedule | None = None) -> None:
        self.frame = frame
        self.profile = profile
        self.schedule = schedule
        self._cache: dict[str, pd.DataFrame] = {}

    def _get(self, key: str, fn: Any, *args: Any) -> pd.DataFrame:
        if key not in self._cache:
            self._cache[key] = fn(self.frame, *args)
        return self._cache[key]

    def components(self) -> pd.DataFrame:
        return self._get("components", component_breakdown)

    def stages(self) -> pd.DataFrame:
        return self._get("stages", stage_breakdown)

    def steps(self) -> pd.DataFrame:
        return self._get("steps", step_timeline)

    def transfers(self) -> pd.DataFrame:
        return self._get("transfers", transfer_outcomes)

    def memory(self) -> pd.DataFrame:
        return self._get("memory", memory_timeline)

    def resident_at_peak(self) -> pd.DataFrame:
        return self._get("resident_at_peak", resident_at_peak, self.schedule)

    def activations(self) -> pd.DataFrame | None:
        """`activation_timeline`, or None without a schedule."""
        if self.schedule is None:
            return None
        return self._get("activations", activation_timeline, self.schedule)

    def bandwidth(self) -> pd.DataFrame:
        return self._get("bandwidth", bandwidth_summary, self.profile)

    def lower_bound(self) -> pd.DataFrame:
        return self._get("lower_bound", lower_bound, self.profile)

    def events(self) -> pd.DataFrame:
        return self._get("events", event_counts)

    def summary(self) -> dict[str, Any]:
        """Headline numbers of the request (setup excluded), seconds and bytes."""
        comp = self.components()
        bound = self.lower_bound().iloc[0]
        h2d = self.bandwidth().set_index("direction").loc["h2d"]
        mem = self.memory()
        request = self.stages()
        request = request[request["stage"] != "setup"]
        out: dict[str, Any] = {
            "latency_s": float(bound["latency_s"]),
            "compute_s": float(bound["compute_s"]),
            "stall_s": float(request["stall_s"].sum()),
            "exposed_transfer_s": float(request["exposed_transfer_s"].sum()),
            "transfer_s": float(request["transfer_s"].sum()),
            "h2d_bytes": int(request["h2d_bytes"].sum()),
            "d2h_bytes": int(request["d2h_bytes"].sum()),
            "peak_ledger_bytes": int(mem["device_bytes"].max()) if len(mem) else 0,
            "peak_device_bytes": None,
            "pinned_host_bytes": int(mem["pinned_bytes"].max()) if len(mem) else 0,
            "achieved_h2d_bytes_per_s": float(h2d["achieved_bytes_per_s"]),
            "h2d_fraction_of_peak": float(h2d["fraction_of_peak"]),
            "lower_bound_s": float(bound["lower_bound_s"]),
            "ratio_to_bound": float(bound["ratio_to_bound"]),
            "bound": str(bound["bound"]),
        }
        act = self.activations()
        if act is not None and len(act):
            out["peak_device_bytes"] = int(act["device_bytes"].max())
        for col in ("prefetch_hits", "late_prefetches", "demand_loads", "unused_prefetches",
                    "prefetch_skips", "evictions"):
            out[col] = int(comp[col].sum())
        return out
