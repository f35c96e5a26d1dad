"""Where the time and the bytes went: per transfer, per component, per stage.

Inputs are `Tracer.frame()` DataFrames (see `resbench.trace`); rows are in program order,
which is what matches a transfer to the wait and the compute that consumed it.

Definitions used throughout:

* ``transfer_s`` — summed durations of copies (``load`` and ``d2h`` spans);
* ``exposed_transfer_s`` — the part of those copies not overlapped by any compute span;
* ``stall_s`` — summed ``wait`` stalls: compute blocked on a copy it needs;
* a prefetched load is a *hit* when its consuming wait did not stall, *late* when it did,
  *unused* when it was dropped before any compute waited on it; a ``demand`` load was
  issued when the unit was already needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resbench.analysis.intervals import cover, covered, covered_until, union

TRANSFER_KINDS = ("load", "d2h")
OUTCOMES = ("hit", "late", "demand", "unused")


def span_rows(frame: pd.DataFrame, kinds: tuple[str, ...] | str) -> pd.DataFrame:
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    return frame[frame["kind"].isin(kinds) & frame["end_s"].notna()]


def _cover_of(spans: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return cover(spans["t_s"].to_numpy(), spans["end_s"].to_numpy())


def transfer_outcomes(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ``load``: its outcome, the stall it caused and who consumed it.

    Columns: ``row`` (index of the load in `frame`), ``component``, ``unit``, ``stage``,
    ``step``, ``stream``, ``t_s``, ``end_s``, ``bytes``, ``reason`` (prefetch | demand),
    ``outcome`` (hit | late | demand | unused), ``stall_s`` (of the consuming wait),
    ``wait_row`` and ``consumer_row`` (the first compute of the unit after the load; -1
    when none). A wait or compute belongs to the latest load of its unit before it, until
    the unit is released; a prefetch no compute used before its release is *unused*.
    """
    kinds = frame["kind"].to_numpy()
    comps = frame["component"].to_numpy()
    units = frame["unit"].to_numpy()
    stalls = frame["stall_s"].to_numpy()
    open_load: dict[tuple[str, str], int] = {}
    waited: dict[int, int] = {}
    consumed: dict[int, int] = {}
    for i in np.flatnonzero(np.isin(kinds, ("load", "wait", "compute", "release"))):
        key = (comps[i], units[i])
        kind = kinds[i]
        if kind == "load":
            open_load[key] = int(i)
            continue
        if kind == "release":
            open_load.pop(key, None)
            continue
        j = open_load.get(key)
        if j is None:
            continue
        if kind == "wait":
            waited.setdefault(j, int(i))
        elif j not in consumed:
            consumed[j] = int(i)
    at = np.flatnonzero(kinds == "load")
    loads = frame.iloc[at]
    index = frame.index.to_numpy()
    wait_pos = np.array([waited.get(int(p), -1) for p in at], dtype=int)
    use_pos = np.array([consumed.get(int(p), -1) for p in at], dtype=int)
    out = pd.DataFrame({
        "row": index[at],
        **{c: loads[c].to_numpy() for c in ("component", "unit", "stage", "step", "stream",
                                               "t_s", "end_s", "bytes", "reason")},
    })
    stall = np.array([stalls[p] if p >= 0 else 0.0 for p in wait_pos], dtype=float)
    out["stall_s"] = stall
    out["wait_row"] = [index[p] if p >= 0 else -1 for p in wait_pos]
    out["consumer_row"] = [index[p] if p >= 0 else -1 for p in use_pos]
    prefetch = out["reason"].to_numpy() == "prefetch"
    out["outcome"] = np.select(
        [~prefetch, use_pos < 0, stall > 0.0],
        ["demand", "unused", "late"],
        default="hit",
    )
    return out


def _group_table(frame: pd.DataFrame, by: str, compute_cover: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
    """The columns shared by the per-component and per-stage tables, grouped by `by`."""
    compute = span_rows(frame, "compute")
    transfers = span_rows(frame, TRANSFER_KINDS).copy()
    transfers["dur_s"] = transfers["end_s"] - transfers["t_s"]
    transfers["exposed_s"] = transfers["dur_s"] - covered(
        compute_cover, transfers["t_s"].to_numpy(), transfers["end_s"].to_numpy())
    waits = frame[frame["kind"] == "wait"]
    outcomes = transfer_outcomes(frame)
    keys = [k for k in dict.fromkeys(frame.loc[frame[by] != "", by]) if k]
    table = pd.DataFrame({by: keys}).set_index(by)
    table["compute_s"] = (compute["end_s"] - compute["t_s"]).groupby(compute[by]).sum()
    table["compute_calls"] = compute.groupby(by).size()
    table["transfer_s"] = transfers.groupby(by)["dur_s"].sum()
    table["exposed_transfer_s"] = transfers.groupby(by)["exposed_s"].sum()
    table["stall_s"] = waits.groupby(by)["stall_s"].sum()
    loads = transfers[transfers["kind"] == "load"]
    table["h2d_bytes"] = loads.groupby(by)["bytes"].sum()
    table["d2h_bytes"] = transfers[transfers["kind"] == "d2h"].groupby(by)["bytes"].sum()
    table["loads"] = loads.groupby(by).size()
    counts = outcomes.groupby([by, "outcome"]).size().unstack(fill_value=0)
    for outcome, col in zip(OUTCOMES, ("prefetch_hits", "late_prefetches", "demand_loads",
                                       "unused_prefetches"), strict=True):
        table[col] = counts.get(outcome, 0)
    for kind, col in (("prefetch_skip", "prefetch_skips"), ("evict", "evictions")):
        rows = frame[frame["kind"] == kind]
        table[col] = rows.groupby(by).size()
    ints = ["compute_calls", "h2d_bytes", "d2h_bytes", "loads", "prefetch_hits",
            "late_prefetches", "demand_loads", "unused_prefetches", "prefetch_skips", "evictions"]
    table = table.fillna(0.0)
    table[ints] = table[ints].astype("int64")
    return table.reset_index()


def component_breakdown(frame: pd.DataFrame) -> pd.DataFrame:
    """Per component: compute, copies (exposed or hidden), stalls, bytes, prefetch outcomes.

    A wait's stall is charged to the component of the unit it waited for; a copy to the
    component it moved.
    """
    compute_cover = _cover_of(span_rows(frame, "compute"))
    return _group_table(frame, "component", compute_cover)


def stage_breakdown(frame: pd.DataFrame) -> pd.DataFrame:
    """Per stage, in execution order: the component table's columns plus a partition of the
    stage's wall time.

    ``wall_s`` (stage_enter → stage_exit) = ``compute_s`` (busy compute stream)
    + ``stall_wall_s`` (compute waiting on a copy) + ``exposed_copy_s`` (a copy running while
    compute neither runs nor waits: blocking copies, gaps) + ``other_s`` (nothing on the
    device). ``setup`` appears when resident units were loaded before the request.
    """
    compute_cover = _cover_of(span_rows(frame, "compute"))
    table = _group_table(frame, "stage", compute_cover)
    stall_cover = _cover_of(span_rows(frame, "wait"))
    copy_cover = _cover_of(span_rows(frame, TRANSFER_KINDS))
    busy_or_stalled = union(compute_cover, stall_cover)
    anything = union(busy_or_stalled, copy_cover)
    windows = stage_windows(frame)
    table = table.merge(windows, on="stage", how="left")
    w0, w1 = table["start_s"].to_numpy(dtype=float), table["end_s"].to_numpy(dtype=float)

    def inside(c: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return covered_until(c, w1) - covered_until(c, w0)

    compute_in = inside(compute_cover)
    table["wall_s"] = w1 - w0
    table["stall_wall_s"] = inside(busy_or_stalled) - compute_in
    table["exposed_copy_s"] = inside(anything) - inside(busy_or_stalled)
    table["other_s"] = (table["wall_s"] - inside(anything)).clip(lower=0.0)
    return table


def stage_windows(frame: pd.DataFrame) -> pd.DataFrame:
    """Start and end of each stage (``setup`` from its span), in execution order."""
    rows = []
    setup = frame[frame["kind"] == "setup"]
    if len(setup):
        rows.append(("setup", float(setup["t_s"].min()), float(setup["end_s"].max())))
    enters = frame[frame["kind"] == "stage_enter"]
    exits = frame[frame["kind"] == "stage_exit"]
    for stage, t in zip(enters["stage"], enters["t_s"], strict=True):
        ends = exits.loc[(exits["stage"] == stage) & (exits["t_s"] >= t), "t_s"]
        rows.append((stage, float(t), float(ends.min()) if len(ends) else float(t)))
    return pd.DataFrame(rows, columns=["stage", "start_s", "end_s"]).drop_duplicates("stage")


def event_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Decision and action counts: kind, reason, events, bytes (memory samples excluded)."""
    rows = frame[frame["kind"] != "memory"]
    table = rows.groupby(["kind", "reason"], sort=False).agg(
        events=("kind", "size"), bytes=("bytes", "sum")).reset_index()
    return table.astype({"events": "int64", "bytes": "int64"})
