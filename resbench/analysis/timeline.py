"""Time series of a run: denoising steps, device memory, what was resident at the peak."""

from __future__ import annotations

import numpy as np
import pandas as pd

from resbench.analysis.breakdown import span_rows
from resbench.schedule import Schedule

STATE = "(request state, unmanaged)"


def step_timeline(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per denoising step: ``stage``, ``step``, ``start_s``, ``end_s``, ``wall_s``,
    ``compute_s``, ``stall_s``, ``components`` (those that computed, in order).

    A step spans its first wait or compute to its last compute on the compute stream.
    """
    spans = span_rows(frame, ("compute", "wait"))
    spans = spans[spans["step"] >= 0]
    cols = ["stage", "step", "start_s", "end_s", "wall_s", "compute_s", "stall_s", "components"]
    if spans.empty:
        return pd.DataFrame(columns=cols)
    compute = spans[spans["kind"] == "compute"]
    keys = ["stage", "step"]
    table = spans.groupby(keys, sort=False).agg(start_s=("t_s", "min"), end_s=("end_s", "max"))
    table["compute_s"] = (compute["end_s"] - compute["t_s"]).groupby(
        [compute["stage"], compute["step"]]).sum()
    table["stall_s"] = spans.groupby(keys, sort=False)["stall_s"].sum()
    table["components"] = compute.groupby(keys, sort=False)["component"].agg(
        lambda s: ",".join(dict.fromkeys(s)))
    table = table.reset_index()
    table["compute_s"] = table["compute_s"].fillna(0.0)
    table["components"] = table["components"].fillna("")
    table["wall_s"] = table["end_s"] - table["start_s"]
    return table[cols]


def memory_timeline(frame: pd.DataFrame) -> pd.DataFrame:
    """Memory samples: ``t_s``, ``device_bytes`` (the ledger: weights, staging pools,
    request state), ``pinned_bytes`` (host), ``stage``, ``step``. Activation peaks inside a
    call are not sampled; the run's ``peak_device_bytes`` includes them.
    """
    mem = frame[frame["kind"] == "memory"]
    return mem[["t_s", "device_bytes", "pinned_bytes", "stage", "step"]].reset_index(drop=True)


def resident_at_peak(frame: pd.DataFrame, schedule: Schedule | None = None) -> pd.DataFrame:
    """What held the device at its peak, per component.

    Without `schedule` the peak is the highest ledger sample; with it, the highest ledger +
    activations of a call (`activation_timeline`), and the running call's working memory is
    one more row, ``activations of component.unit``.

    Columns: ``component``; ``units`` and ``unit_bytes`` — units loaded and not yet
    released (load/release events in program order) and their weight bytes; ``bytes`` —
    the component's share of the ledger, i.e. its weights as allocated (rounded) plus its
    staging pool; ``share`` of the peak; ``t_s`` of the peak. Each change of the ledger is
    charged to the load or release just before it; a change with none (a staging pool
    allocated or freed) to the next load, or the previous release, which the manager issues
    next to it. What was there before the first event (request state, unmanaged
    components) is the row `STATE`.
    """
    mem = frame[frame["kind"] == "memory"]
    cols = ["component", "units", "unit_bytes", "bytes", "share", "t_s"]
    if mem.empty:
        return pd.DataFrame(columns=cols)
    extra: list[tuple[str, int, int, int]] = []
    if schedule is not None:
        act = activation_timeline(frame, schedule)
        top = int(act["device_bytes"].to_numpy().argmax())
        peak_pos = int(np.flatnonzero(frame["kind"].to_numpy() == "compute")[top])
        peak_bytes = int(act["device_bytes"].iloc[top])
        call = act.iloc[top]
        extra.append((f"activations of {call['component']}.{call['unit']}", 0, 0,
                      int(call["activation_bytes"])))
    else:
        peak_pos = int(frame.index.get_loc(mem["device_bytes"].idxmax()))
        peak_bytes = int(mem["device_bytes"].max())
    kinds = frame["kind"].to_numpy()
    comps = frame["component"].to_numpy()
    units = frame["unit"].to_numpy()
    nbytes = frame["bytes"].to_numpy()
    device = frame["device_bytes"].to_numpy()
    moves = np.flatnonzero(np.isin(kinds[: peak_pos + 1], ("load", "release")))
    ledger: dict[str, int] = {}
    last = 0
    for pos in np.flatnonzero(kinds[: peak_pos + 1] == "memory"):
        delta = int(device[pos]) - last
        last = int(device[pos])
        if not delta:
            continue
        owner = STATE if last == delta and not len(moves[moves < pos]) else None
        if owner is None and pos and kinds[pos - 1] in ("load", "release"):
            owner = comps[pos - 1]
        if owner is None:
            after = moves[(moves > pos) & (kinds[moves] == "load")]
            before = moves[(moves < pos) & (kinds[moves] == "release")]
            if delta > 0 and len(after):
                owner = comps[after[0]]
            elif delta < 0 and len(before):
                owner = comps[before[-1]]
            else:
                owner = STATE
        ledger[owner] = ledger.get(owner, 0) + delta
    on: dict[tuple[str, str], int] = {}
    for pos in moves:
        if kinds[pos] == "load":
            on[(comps[pos], units[pos])] = int(nbytes[pos])
        else:
            on.pop((comps[pos], units[pos]), None)
    rows = []
    for comp, held in ledger.items():
        if held <= 0:
            continue
        mine = [b for (c, _), b in on.items() if c == comp]
        rows.append((comp, len(mine), sum(mine), held))
    rows += extra
    table = pd.DataFrame(rows, columns=["component", "units", "unit_bytes", "bytes"])
    table = table.sort_values("bytes", ascending=False, kind="stable").reset_index(drop=True)
    table["share"] = table["bytes"] / peak_bytes if peak_bytes else np.nan
    table["t_s"] = float(frame["t_s"].iloc[peak_pos])
    return table[cols]


def activation_timeline(frame: pd.DataFrame, schedule: Schedule) -> pd.DataFrame:
    """Device memory while each call runs: the ledger plus the call's working memory.

    The trace samples the ledger (weights, pools, state) but not the activations a call
    allocates while it runs; the schedule has them (`UnitCall.activation_bytes`), in the
    same order as the trace's compute spans (a steady-state run traces the schedule twice,
    `RunResult.steady_state`). Columns: ``t_s``, ``end_s``, ``component``, ``unit``,
    ``ledger_bytes``, ``activation_bytes``, ``device_bytes`` (their sum; its maximum is the
    run's peak).
    """
    kinds = frame["kind"].to_numpy()
    compute_pos = np.flatnonzero(kinds == "compute")
    requests = int((kinds == "request_start").sum()) or 1
    if len(compute_pos) != requests * len(schedule.calls):
        raise ValueError(f"the trace has {len(compute_pos)} compute spans, the schedule "
                         f"{len(schedule.calls)} calls ({requests} request(s)): not the same run")
    mem_pos = np.flatnonzero(kinds == "memory")
    ledger = frame["device_bytes"].to_numpy()[mem_pos]
    before = np.searchsorted(mem_pos, compute_pos) - 1
    ledger_at = np.where(before >= 0, ledger[np.maximum(before, 0)] if len(ledger) else 0, 0)
    act = np.tile(np.array([c.activation_bytes for c in schedule.calls], dtype=np.int64),
                  requests)
    rows = frame.iloc[compute_pos]
    return pd.DataFrame({
        "t_s": rows["t_s"].to_numpy(), "end_s": rows["end_s"].to_numpy(),
        "component": rows["component"].to_numpy(), "unit": rows["unit"].to_numpy(),
        "ledger_bytes": ledger_at.astype(np.int64), "activation_bytes": act,
        "device_bytes": ledger_at.astype(np.int64) + act,
    })
