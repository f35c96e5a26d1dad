"""The card's GPU seconds per unit (`<measured>_units.csv`, from `oos_measure`'s traced runs)
against the cost model's, for the pairs that copy nothing during the request (all-resident:
no copy beside compute to slow it down), so a latency miss can be put on a stage, a component
and a unit kind (blocks vs the rest).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from resbench.cost import CostModel
from resbench.hardware import HardwareProfile
from resbench.schedule import Schedule


def sim_units(schedule: Schedule, profile: HardwareProfile) -> pd.DataFrame:
    """Per (stage, component, unit): the schedule's calls and the cost model's seconds."""
    model = CostModel(profile)
    times = model.call_times(schedule.calls)
    rows = [{"stage": c.stage, "component": c.component, "unit": c.unit, "sim_s": t}
            for c, t in zip(schedule.calls, times, strict=True)]
    return (pd.DataFrame(rows).groupby(["stage", "component", "unit"], sort=False)
            .agg(sim_calls=("sim_s", "size"), sim_s=("sim_s", "sum")).reset_index())


def unit_kind(unit: str) -> str:
    """`blocks` for a repeated block (its name ends in an index), else the unit's name."""
    return "blocks" if unit.rsplit(".", 1)[-1].isdigit() else unit


def compare(units: pd.DataFrame, pred: pd.DataFrame, schedules: dict[str, Schedule],
            profile: HardwareProfile) -> pd.DataFrame:
    """Per (request, stage, component, unit kind) of the all-resident pairs: real and
    simulated GPU seconds and the error (simulated / real - 1, %). `schedules` maps a
    request slug to its schedule."""
    ran = set(units.pair_id)
    resident = pred[(pred.plan == "all-resident") & pred.pair_id.isin(ran)].drop_duplicates(
        "request")
    out = []
    for r in resident.itertuples():
        real = units[units.pair_id == r.pair_id]
        if real.empty or r.request not in schedules:
            continue
        both = real.merge(sim_units(schedules[r.request], profile),
                          on=["stage", "component", "unit"], how="outer")
        both["kind"] = both.unit.map(unit_kind)
        g = both.groupby(["stage", "component", "kind"], sort=False).agg(
            calls=("calls", "sum"), real_s=("compute_s", "sum"), sim_s=("sim_s", "sum"))
        g.insert(0, "request", r.request)
        g.insert(1, "pair_id", r.pair_id)
        out.append(g.reset_index())
    if not out:
        return pd.DataFrame(columns=["request", "pair_id", "stage", "component", "kind",
                                     "calls", "real_s", "sim_s", "err_pct"])
    frame = pd.concat(out, ignore_index=True)
    frame["err_pct"] = 100 * (frame.sim_s / frame.real_s - 1)
    return frame


def markdown(frame: pd.DataFrame) -> list[str]:
    """The comparison as a markdown section (empty when there is nothing to compare)."""
    if frame.empty:
        return []

    def num(x: Any, spec: str) -> str:
        return "" if x != x else format(x, spec)

    lines = ["", "## Compute by stage, component and unit kind (all-resident pairs, traced)", "",
             "The card's GPU seconds of each unit's calls (CUDA events around each call on the "
             "compute stream) against the cost model's for the same calls.", "",
             "| request | stage | component | units | calls | real s | sim s | error % |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.request} | {r.stage} | {r.component} | {r.kind} | {num(r.calls, '.0f')} | "
              f"{num(r.real_s, '.3f')} | {num(r.sim_s, '.3f')} | {num(r.err_pct, '+.1f')} |"
              for r in frame.itertuples()]
    return lines
