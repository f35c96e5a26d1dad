"""Figures of one run (or several): drawing only; every number comes from `resbench.analysis`.

Each function takes DataFrames and returns a matplotlib `Figure`; `resbench.report.svg`
turns it into inline SVG. Times are seconds, sizes bytes (shown in GB, 10^9).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from resbench.analysis.breakdown import span_rows
from resbench.analysis.intervals import cover, covered_until

GB = 1e9
STALL = "#d62728"
PARTS = (  # stage_breakdown columns stacked in the latency bars
    ("compute_s", "compute", "#4c72b0"),
    ("stall_wall_s", "stall: compute waits on a copy", STALL),
    ("exposed_copy_s", "copy on the critical path (not a wait)", "#ff7f0e"),
    ("other_s", "other (device idle)", "#bbbbbb"),
)
_PALETTE = ("#4c72b0", "#55a868", "#8172b2", "#ccb974", "#64b5cd", "#937860", "#da8bc3",
            "#8c8c8c", "#dd8452", "#17becf")
DECISIONS = {"prefetch_skip": ("x", "prefetch skipped"), "evict": ("v", "evicted"),
             "keep": ("o", "kept after use")}


def palette(components: Sequence[str]) -> dict[str, str]:
    """A fixed colour per component, in the order given (the same in every figure)."""
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(dict.fromkeys(components))}


def _occupancy(spans: pd.DataFrame, edges: np.ndarray) -> np.ndarray:
    """Share of each bin [edges[i], edges[i+1]) covered by `spans`, in [0, 1]."""
    c = cover(spans["t_s"].to_numpy(), spans["end_s"].to_numpy())
    return np.diff(covered_until(c, edges)) / np.diff(edges)


def _draw_row(ax: Axes, spans: pd.DataFrame, y: float, colors: dict[str, str] | str,
              edges: np.ndarray | None) -> None:
    """One queue's row: a bar per span (`edges` None), or per time bin a bar as tall as the
    share of the bin the queue was busy, stacked by component (a wide view cannot show
    gaps shorter than a bin, and closing them would show an idle link as busy)."""
    parts = [(colors, spans)] if isinstance(colors, str) else [
        (colors.get(comp, "#888888"), part) for comp, part in spans.groupby("component", sort=False)]
    if edges is None:
        for color, part in parts:
            ax.broken_barh(list(zip(part["t_s"], part["end_s"] - part["t_s"], strict=True)),
                           (y - 0.35, 0.7), facecolor=color, edgecolor="white", linewidth=0.8)
        return
    # one filled step outline per component (no seams between bins), with shares rounded to
    # 1% and only the bins where the outline changes kept (a small SVG)
    bottom = np.zeros(len(edges))
    for color, part in parts:
        top = bottom + 0.7 * np.round(np.append(_occupancy(part, edges), 0.0), 2)
        if not (top > bottom).any():
            continue
        keep = np.ones(len(edges), dtype=bool)
        keep[1:-1] = (np.diff(top)[:-1] != 0) | (np.diff(bottom)[:-1] != 0)
        ax.fill_between(edges[keep], (y - 0.35 + bottom)[keep], (y - 0.35 + top)[keep],
                        step="post", color=color, lw=0)
        bottom = top


def _stage_bands(ax: Axes, windows: pd.DataFrame, t0: float, t1: float, *, labels: bool) -> None:
    for i, w in enumerate(windows.itertuples()):
        if w.stage == "setup" or w.end_s <= t0 or w.start_s >= t1:
            continue
        if i % 2:
            ax.axvspan(max(w.start_s, t0), min(w.end_s, t1), color="#000000", alpha=0.04, lw=0)
        if labels:
            mid = (max(w.start_s, t0) + min(w.end_s, t1)) / 2
            ax.text(mid, 1.01, w.stage, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, color="#555555")


def _timeline_axes(ax: Axes, frame: pd.DataFrame, colors: dict[str, str], t0: float, t1: float,
                   windows: pd.DataFrame, steps: pd.DataFrame, *, title: str,
                   detail: bool = False) -> None:
    window = frame[(frame["end_s"].fillna(frame["t_s"]) >= t0) & (frame["t_s"] <= t1)]
    edges = None if detail else np.linspace(t0, t1, 601)
    rows: list[tuple[str, pd.DataFrame, str | None]] = [
        ("compute", span_rows(window, "compute"), None),
        ("waiting on a copy", span_rows(window, "wait").query("stall_s > 0"), STALL),
        ("H2D copy", span_rows(window, "load"), None),
    ]
    d2h = span_rows(window, "d2h")
    if len(d2h):
        rows.append(("D2H copy", d2h, None))
    decided = frame["kind"].isin(list(DECISIONS)) & ~((frame["kind"] == "keep") & (frame["reason"] == "resident"))
    names = [name for name, _, _ in rows] + (["decisions"] if decided.any() else [])
    y = {name: len(names) - 1 - i for i, name in enumerate(names)}
    for name, spans, color in rows:
        _draw_row(ax, spans, y[name], color or colors, edges)
        if detail and name == "compute":
            for r in spans.itertuples():
                a, b = max(r.t_s, t0), min(r.end_s, t1)
                if b - a > (t1 - t0) * 0.045:
                    ax.text((a + b) / 2, y[name], r.unit, ha="center", va="center", fontsize=7,
                            color="white", clip_on=True)
    seen: set[str] = set()
    for kind, (marker, label) in DECISIONS.items():
        marks = window[window["kind"] == kind]
        if kind == "keep":
            marks = marks[marks["reason"] != "resident"]
        for comp, part in marks.groupby("component", sort=False):
            ax.scatter(part["t_s"], np.full(len(part), y.get("decisions", 0)), marker=marker, s=28,
                       color=colors.get(comp, "#888888"), zorder=3,
                       label=label if label not in seen else None)
            seen.add(label)
    _stage_bands(ax, windows, t0, t1, labels=True)
    in_view = steps[(steps["start_s"] >= t0) & (steps["start_s"] < t1)]
    for s in in_view.itertuples():
        ax.axvline(s.start_s, color="#555555", lw=0.5, ls=":", zorder=0)
        if len(in_view) <= 12:
            ax.text(s.start_s, -0.85, f" step {s.step}", fontsize=7, color="#555555", va="bottom")
    ax.set_yticks(list(y.values()), list(y.keys()))
    ax.set_ylim(-0.9, len(names) - 0.4)
    ax.set_xlim(t0, t1)
    ax.set_xlabel("time since the request started (s)")
    ax.grid(axis="y", visible=False)
    ax.set_title(title, pad=20)


def timeline_figure(frame: pd.DataFrame, windows: pd.DataFrame, steps: pd.DataFrame,
                    colors: dict[str, str], zoom: tuple[float, float] | None = None) -> Figure:
    """Compute and copy streams over the whole request (rows of bars coloured by
    component, stalls in red, decisions marked), and a zoomed panel when `zoom` is given."""
    request = windows[windows["stage"] != "setup"]
    t0 = float(request["start_s"].min()) if len(request) else float(frame["t_s"].min())
    t1 = float(request["end_s"].max()) if len(request) else float(frame["end_s"].max())
    panels = 2 if zoom else 1
    fig, axes = plt.subplots(panels, 1, figsize=(11, 2.6 * panels + 0.6), squeeze=False)
    _timeline_axes(axes[0][0], frame, colors, t0, t1, windows, steps,
                   title="Timeline of the request: how busy each GPU queue was (bar height = "
                         "share of the time)")
    if zoom:
        z0, z1 = zoom
        _timeline_axes(axes[1][0], frame, colors, z0, z1, windows, steps, detail=True,
                       title=f"Zoom on the yellow band: {z0:.3f} s to {z1:.3f} s, one bar per unit "
                             "call or copy")
        axes[0][0].axvspan(z0, z1, color="#ffcc00", alpha=0.35, lw=0)
    handles = [Patch(color=c, label=comp) for comp, c in colors.items()]
    handles.append(Patch(color=STALL, label="stall"))
    marks = [h for h in axes[0][0].get_legend_handles_labels()[0]]
    fig.legend(handles=handles + marks, loc="lower center", ncol=min(8, len(handles) + len(marks)),
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def zoom_window(frame: pd.DataFrame, windows: pd.DataFrame, calls: int = 14) -> tuple[float, float] | None:
    """A window showing streaming at work: the start of the stage with the most compute
    time, `calls` calls long. None when the whole request is short anyway."""
    compute = span_rows(frame, "compute")
    if len(compute) <= calls * 2:
        return None
    busy = (compute["end_s"] - compute["t_s"]).groupby(compute["stage"]).sum()
    busiest = busy.idxmax()
    stage = compute[compute["stage"] == busiest]
    start = windows.loc[windows["stage"] == busiest, "start_s"]
    t0 = float(start.iloc[0]) if len(start) else float(stage["t_s"].iloc[0])
    t1 = float(stage["end_s"].iloc[min(calls, len(stage)) - 1])
    return t0, t1


def _envelope(starts: np.ndarray, ends: np.ndarray, values: np.ndarray,
              bins: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """The maximum of `values` over each of `bins` equal time bins (the calls overlapping
    it): what a plot that wide can show, in a fixed number of points."""
    t0, t1 = float(starts.min()), float(ends.max())
    width = (t1 - t0) / bins or 1.0
    first = np.clip(((starts - t0) / width).astype(int), 0, bins - 1)
    last = np.clip(((ends - t0) / width).astype(int), 0, bins - 1)
    counts = last - first + 1
    idx = np.repeat(first, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    top = np.zeros(bins)
    np.maximum.at(top, idx, np.repeat(values, counts))
    x = t0 + width * np.arange(bins + 1)
    y = np.append(top, top[-1])
    keep = np.ones(len(y), dtype=bool)
    keep[1:-1] = np.diff(y)[:-1] != 0  # a step outline needs only its changes
    return x[keep], y[keep]


def memory_figure(memory: pd.DataFrame, windows: pd.DataFrame, *, budget_bytes: int | None,
                  usable_bytes: int | None = None, margin_bytes: int = 0,
                  activations: pd.DataFrame | None = None, peak_note: str = "") -> Figure:
    """Device memory over the request: the ledger (weights, staging pools, state) as a step
    line, ledger + each call's activations as a shaded area, the budget and margin lines."""
    fig, ax = plt.subplots(figsize=(11, 3.4))
    changed = memory["device_bytes"].ne(memory["device_bytes"].shift())
    changed.iloc[-1:] = True
    memory = memory[changed]  # a step line needs only the changes (keeps the SVG small)
    t = memory["t_s"].to_numpy()
    if activations is not None and len(activations):
        x, yv = _envelope(activations["t_s"].to_numpy(), activations["end_s"].to_numpy(),
                          activations["device_bytes"].to_numpy(dtype=float))
        ax.fill_between(x, yv / GB, step="post", color="#4c72b0", alpha=0.25, lw=0,
                        label="with the running call's activations")
        top = activations.loc[activations["device_bytes"].idxmax()]
        ax.plot([top["t_s"]], [top["device_bytes"] / GB], "v", color="#4c72b0", ms=7)
        peak_t, peak_y = float(top["t_s"]), float(top["device_bytes"])
    else:
        i = int(memory["device_bytes"].to_numpy().argmax()) if len(memory) else 0
        peak_t = float(t[i]) if len(t) else 0.0
        peak_y = float(memory["device_bytes"].iloc[i]) if len(memory) else 0.0
    ax.step(t, memory["device_bytes"] / GB, where="post", color="#1f3b66", lw=1.2,
            label="weights + staging + state (ledger)")
    if peak_note:
        ax.annotate(peak_note, (peak_t, peak_y / GB), xytext=(10, -4), textcoords="offset points",
                    fontsize=8, va="top", color="#1f3b66")
    lines = []
    if budget_bytes:
        lines.append((budget_bytes, "budget", "#d62728", "--"))
    if usable_bytes and budget_bytes and usable_bytes < budget_bytes:
        lines.append((usable_bytes, "usable (after fragmentation)", "#d62728", ":"))
    if margin_bytes and (usable_bytes or budget_bytes):
        base = usable_bytes or budget_bytes or 0
        lines.append((base - margin_bytes, "usable − buffer margin", "#ff7f0e", ":"))
    for i, (value, label, color, ls) in enumerate(lines):
        ax.axhline(value / GB, color=color, ls=ls, lw=1)
        ax.text(0.005, value / GB, f"{label} {value / GB:.1f} GB", transform=ax.get_yaxis_transform(),
                color=color, fontsize=8, va="bottom" if i == 0 else "top", ha="left")
    _stage_bands(ax, windows, float(t.min()) if len(t) else 0.0, float(t.max()) if len(t) else 1.0,
                 labels=True)
    ax.set_ylim(0, max([peak_y / GB * 1.15] + [v / GB * 1.08 for v, *_ in lines]))
    ax.set_xlim(windows["start_s"].min(), windows["end_s"].max())
    ax.set_ylabel("device memory (GB)")
    ax.set_xlabel("time since the request started (s)")
    ax.set_title("Device memory", pad=20)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.tight_layout()
    return fig


def _stacked(ax: Axes, labels: Sequence[str], table: pd.DataFrame,
             parts: Sequence[tuple[str, str, str]], *, horizontal: bool = True,
             notes: Sequence[str] = ()) -> None:
    pos = np.arange(len(labels))
    left = np.zeros(len(labels))
    for col, label, color in parts:
        values = table[col].to_numpy(dtype=float)
        if horizontal:
            ax.barh(pos, values, left=left, color=color, label=label, height=0.6)
        else:
            ax.bar(pos, values, bottom=left, color=color, label=label, width=0.7)
        left += values
    if horizontal:
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
        for i, (p, total) in enumerate(zip(pos, left, strict=True)):
            note = notes[i] if i < len(notes) else ""
            ax.text(total, float(p), f" {total:.3g} s{note}", va="center", fontsize=8)
        ax.set_xlim(0, max(left.max(), 1e-9) * 1.15)
        ax.grid(axis="y", visible=False)
    else:
        ax.set_xticks(pos, labels, rotation=0 if len(labels) <= 12 else 90)
        ax.grid(axis="x", visible=False)


def breakdown_figure(stages: pd.DataFrame, steps: pd.DataFrame,
                     colors: dict[str, str] | None = None) -> Figure:
    """Where the latency went: per stage (compute / stall / exposed copy / idle) and per
    denoising step (compute / stall)."""
    request = stages[stages["stage"] != "setup"]
    has_steps = len(steps) > 0
    fig, axes = plt.subplots(1, 2 if has_steps else 1, figsize=(11, 2.2 + 0.35 * len(request)),
                             squeeze=False, gridspec_kw={"width_ratios": [3, 2] if has_steps else [1]})
    ax = axes[0][0]
    stalled = (request["stall_wall_s"] / request["wall_s"].where(request["wall_s"] > 0)).fillna(0)
    notes = [f", {share:.0%} stalled" if share >= 0.05 else "" for share in stalled]
    _stacked(ax, list(request["stage"]), request, PARTS, notes=notes)
    ax.set_xlabel("seconds")
    ax.set_title("Latency by stage")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    if has_steps:
        ax2 = axes[0][1]
        pos = np.arange(len(steps))
        colors = colors or {}
        ax2.bar(pos, steps["compute_s"], width=0.7,
                color=[colors.get(c.split(",")[0], PARTS[0][2]) for c in steps["components"]])
        ax2.bar(pos, steps["stall_s"], bottom=steps["compute_s"], width=0.7, color=STALL, label="stall")
        for comp in dict.fromkeys(steps["components"]):
            ax2.bar([0], [0], color=colors.get(comp.split(",")[0], PARTS[0][2]), label=f"compute: {comp}")
        ax2.set_xticks(pos, [str(s) for s in steps["step"]] if len(steps) <= 20 else
                       [str(s) if i % 5 == 0 else "" for i, s in enumerate(steps["step"])])
        ax2.grid(axis="x", visible=False)
        ax2.set_xlabel("denoising step")
        ax2.set_ylabel("seconds")
        ax2.set_title("Denoising steps")
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2)
    fig.tight_layout()
    return fig


def components_figure(components: pd.DataFrame, colors: dict[str, str]) -> Figure:
    """Per component: compute time, and its copy time split into the part hidden under
    compute and the part that is not."""
    table = components.copy()
    table["hidden_s"] = (table["transfer_s"] - table["exposed_transfer_s"]).clip(lower=0)
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.55 * len(table)))
    pos = np.arange(len(table))
    h = 0.38
    ax.barh(pos - h / 2, table["compute_s"], height=h,
            color=[colors.get(c, PARTS[0][2]) for c in table["component"]], label="compute")
    ax.barh(pos + h / 2, table["hidden_s"], height=h, color="#9ecae1", label="copy hidden under compute")
    ax.barh(pos + h / 2, table["exposed_transfer_s"], left=table["hidden_s"], height=h,
            color=PARTS[2][2], label="copy not hidden")
    for p, c, t in zip(pos, table["compute_s"], table["transfer_s"], strict=True):
        ax.text(c, p - h / 2, f" {c:.3g} s", va="center", fontsize=7.5)
        ax.text(t, p + h / 2, f" {t:.3g} s", va="center", fontsize=7.5, color="#555555")
    ax.set_yticks(pos, table["component"])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(table["compute_s"].max(), table["transfer_s"].max(), 1e-9) * 1.12)
    ax.set_title("Per component: compute (upper bar) and copies (lower bar)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def compare_figure(names: Sequence[str], metrics: pd.DataFrame) -> Figure:
    """Several runs side by side: latency split (compute / stall / rest) and peak memory
    against each run's budget. `metrics` has one row per run (`run_metrics` columns plus
    ``capacity_bytes``)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 1.4 + 0.45 * len(names)),
                                  gridspec_kw={"width_ratios": [3, 2]})
    table = metrics.copy()
    table["other_s"] = (table["latency_s"] - table["compute_s"] - table["stall_s"]).clip(lower=0)
    parts = (("compute_s", "compute", PARTS[0][2]), ("stall_s", "stall", STALL),
             ("other_s", "other", PARTS[3][2]))
    _stacked(ax, list(names), table, parts)
    ax.set_xlabel("seconds")
    ax.set_title("Latency")
    ax.legend(loc="lower right")
    pos = np.arange(len(names))
    ax2.barh(pos, table["peak_device_bytes"] / GB, color="#4c72b0", height=0.6, label="peak")
    if "capacity_bytes" in table:
        ax2.scatter(table["capacity_bytes"] / GB, pos, marker="|", s=300, color="#d62728",
                    label="budget", zorder=3)
    ax2.set_yticks(pos, names)
    ax2.invert_yaxis()
    ax2.set_xlabel("GB")
    ax2.set_title("Peak device memory")
    ax2.legend(loc="lower right")
    ax2.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def budget_figure(curve: pd.DataFrame, *, budget_bytes: int | None = None,
                  highlight: str | None = None, bound_s: float | None = None) -> Figure:
    """Latency against the memory budget, one line per plan (gaps where it does not fit),
    the best of them at each budget; the right panel zooms on the plans within 10% of the
    best."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    fitting = curve[curve["fits"]]
    plans = [p for p in dict.fromkeys(curve["plan"]) if p in set(fitting["plan"])]
    colors = palette(plans)
    best = fitting.groupby("budget_bytes")["latency_s"].min()
    lo = float(best.min()) if len(best) else 0.0
    for k, ax in enumerate(axes):
        for plan in plans:
            part = curve[curve["plan"] == plan].sort_values("budget_bytes")
            y = part["latency_s"].where(part["fits"])
            if k == 1 and not (y <= lo * 1.03).any():
                continue
            ax.plot(part["budget_bytes"] / GB, y, marker="o", ms=3,
                    lw=2.4 if plan == highlight else 1.2, color=colors[plan],
                    label=plan if k == 0 else None, zorder=3 if plan == highlight else 2)
        ax.step(best.index / GB, best.to_numpy(), where="post", color="black", lw=0.8, ls="--",
                label="best of these" if k == 0 else None)
        if bound_s:
            ax.axhline(bound_s, color="#555555", lw=0.8, ls=":",
                       label="compute alone (lower bound)" if k == 0 else None)
        if budget_bytes:
            ax.axvline(budget_bytes / GB, color="#d62728", ls=":", lw=1)
            ax.text(budget_bytes / GB, 1.0, " this budget", color="#d62728", fontsize=8,
                    transform=ax.get_xaxis_transform(), va="top")
        ax.set_xlabel("device memory budget (GB)")
        ax.set_ylabel("latency (s)")
    if len(best):
        floor = min(lo, bound_s or lo)
        axes[1].set_ylim(floor - 0.003 * lo, lo * 1.03)
    axes[0].set_title("What a bigger budget buys (simulated)")
    axes[1].set_title("Zoom: within 3% of the best")
    fig.legend(loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.12 + 0.04 * (len(plans) // 4), 1, 1))
    return fig
