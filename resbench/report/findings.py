"""Plain-language findings from a run's analyses: the first thing a reader sees."""

from __future__ import annotations

import pandas as pd

from resbench.analysis import RunAnalysis
from resbench.units import format_bytes


def _pct(part: float, whole: float) -> str:
    if not whole:
        return "–"
    pct = 100 * part / whole
    return f"{pct:.1f}%" if abs(pct) < 10 else f"{pct:.0f}%"


def stall_causes(frame: pd.DataFrame, outcomes: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """The stalls grouped by (stage, component) and the kind of load they waited for."""
    waits = frame[(frame["kind"] == "wait") & (frame["stall_s"] > 0)]
    if waits.empty:
        return pd.DataFrame(columns=["stage", "component", "load", "stall_s", "waits"])
    kind = dict(zip(outcomes["wait_row"], outcomes["outcome"], strict=True))
    table = waits.assign(load=[kind.get(i, "copy") for i in waits.index])
    table = table.groupby(["stage", "component", "load"], sort=False).agg(
        stall_s=("stall_s", "sum"), waits=("stall_s", "size")).reset_index()
    return table.sort_values("stall_s", ascending=False, kind="stable").head(top)


def run_findings(a: RunAnalysis, *, budget_bytes: int | None) -> list[str]:
    s = a.summary()
    out = []
    latency, bound = s["latency_s"], s["lower_bound_s"]
    over = latency - bound
    if s["bound"] == "compute":
        out.append(f"Latency {latency:.3f} s is {_pct(over, bound)} above the lower bound "
                   f"{bound:.3f} s (compute-bound: the H2D traffic would take "
                   f"{a.lower_bound().iloc[0]['transfer_bound_s']:.3f} s at peak bandwidth), so a "
                   f"better residency plan can save at most {over:.3f} s.")
    else:
        out.append(f"Latency {latency:.3f} s is {_pct(over, bound)} above the lower bound "
                   f"{bound:.3f} s, set by the link: {format_bytes(s['h2d_bytes'])} must cross it "
                   f"(compute alone is {s['compute_s']:.3f} s). Fewer bytes moved (more resident "
                   f"blocks, keeping components) is what helps.")
    if s["stall_s"] > 0:
        causes = stall_causes(a.frame, a.transfers())
        first = next((st for st in a.stages()["stage"] if st != "setup"), "")
        parts = [f"{c.stall_s:.3f} s on {c.component} in {c.stage} ({c.waits} wait"
                 f"{'s' if c.waits > 1 else ''}, "
                 + ("cold start: nothing runs before the first stage to hide its copy"
                    if c.load == "demand" and c.stage == first else
                    "not prefetched" if c.load == "demand" else c.load + " prefetch") + ")"
                 for c in causes.itertuples()]
        out.append(f"Compute waited on copies for {s['stall_s']:.3f} s ({_pct(s['stall_s'], latency)} "
                   f"of the latency): " + "; ".join(parts) + ".")
    else:
        out.append("Compute never waited on a copy: every transfer was hidden.")
    prefetches = s["prefetch_hits"] + s["late_prefetches"] + s["unused_prefetches"]
    comp = a.components()
    demand = ", ".join(f"{r.component} {r.demand_loads}" for r in comp.itertuples() if r.demand_loads)
    out.append(f"{s['prefetch_hits']} of {prefetches} prefetched copies landed in time, "
               f"{s['late_prefetches']} were late; {s['demand_loads']} copies were made on demand"
               + (f" ({demand})." if demand else "."))
    unused = comp[comp["unused_prefetches"] > 0]
    if len(unused):
        t = a.transfers()
        waste = t[t["outcome"] == "unused"].groupby("component")["bytes"].sum()
        out.append("Copied in and released without being used: " + ", ".join(
            f"{r.component} {r.unused_prefetches} units ({format_bytes(waste.get(r.component, 0))})"
            for r in unused.itertuples()) + " — units the stage does not run (e.g. a VAE's encoder).")
    peak = a.resident_at_peak()
    if len(peak):
        total = int(peak["bytes"].sum())
        t_peak = float(peak["t_s"].iloc[0])
        held = "; ".join(f"{r.component} {format_bytes(r.bytes)}" for r in peak.head(3).itertuples())
        of_budget = f", {_pct(total, budget_bytes)} of the {format_bytes(budget_bytes)} budget" if budget_bytes else ""
        if a.schedule is not None:
            out.append(f"Peak device memory {format_bytes(total)} at {t_peak:.3f} s{of_budget}: {held}.")
        else:  # a real run: samples are taken between unit calls, the allocator's peak is higher
            out.append(f"Largest memory sample between unit calls {format_bytes(total)} at "
                       f"{t_peak:.3f} s{of_budget}: {held} (the allocator's measured peak, with "
                       "the activations of the running call, is on the card above).")
    bw = a.bandwidth().set_index("direction").loc["h2d"]
    if bw["bytes"]:
        out.append(f"H2D copies moved {format_bytes(bw['bytes'])} at {bw['achieved_bytes_per_s'] / 1e9:.1f} GB/s "
                   f"while busy, {_pct(bw['achieved_bytes_per_s'], bw['peak_bytes_per_s'])} of the "
                   f"profile's {bw['peak_bytes_per_s'] / 1e9:.1f} GB/s pinned peak"
                   + (" (pageable copies are slower: pin the host copies)."
                      if bw["fraction_of_peak"] < 0.8 else "."))
    return out
