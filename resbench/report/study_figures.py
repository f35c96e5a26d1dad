"""Figures of a tuning study: history with best so far, importances, Pareto front, the best
plan against the presets. Drawing only; the data come from `resbench.report.study`."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure

from resbench.report.figures import GB, STALL
from resbench.report.study import feasible_study
from resbench.report.svg import style

FEASIBLE, PRESET, BEST = "#4c72b0", "#dd8452", "#1a7f37"


def history_figure(trials: pd.DataFrame, best: pd.DataFrame, metric: str) -> Figure:
    """Every feasible trial's value, the presets queued first, and the best so far; values
    far above the best are drawn as triangles on the top edge."""
    fig, ax = plt.subplots(figsize=(11, 3.4))
    ok = trials[trials["feasible"]]
    lo = float(ok[metric].min()) if len(ok) else 0.0
    top = min(float(ok[metric].max()) if len(ok) else 1.0, lo * 1.3) * 1.02
    for part, size, marker, color, label in (
            (ok[ok["preset"] == ""], 14, "o", FEASIBLE, "trial (fits)"),
            (ok[ok["preset"] != ""], 40, "D", PRESET, "preset (queued first)")):
        inside = part[part[metric] <= top]
        ax.scatter(inside["number"], inside[metric], s=size, marker=marker, color=color, label=label)
        above = part[part[metric] > top]
        ax.scatter(above["number"], np.full(len(above), top), s=22, marker="^", color=color,
                   clip_on=False)
    bad = trials[~trials["feasible"]]
    ax.scatter(bad["number"], np.full(len(bad), lo - (top - lo) * 0.04), s=12, marker="x",
               color="#aaaaaa", clip_on=False, label="does not fit (drawn at the bottom)")
    ax.step(best["number"], best["best"], where="post", color=BEST, lw=1.6, label="best so far")
    ax.set_ylim(lo - (top - lo) * 0.08, top)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric.replace("_s", " (s)"))
    ax.set_title("Tuning history (triangles: above the plotted range)")
    ax.legend(loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def importance_figure(study: optuna.Study, params: list[str], metric: str) -> Figure | None:
    """optuna's importance plot of `params` over the trials that fit, isolated from the
    report's style (optuna sets ggplot globally)."""
    with style(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ax = optuna.visualization.matplotlib.plot_param_importances(
                feasible_study(study), params=params, target=lambda t: t.values[0],
                target_name=metric)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return None
        fig = ax.figure
        assert isinstance(fig, Figure)
        fig.set_size_inches(11, 0.25 * len(params) + 1.4)
        fig.tight_layout()
    return fig


def pareto_figure(trials: pd.DataFrame, front: pd.DataFrame, x: str, y: str,
                  budget_bytes: int | None = None) -> Figure:
    """Latency against peak memory: every feasible trial, the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ok = trials[trials["feasible"]]
    ax.scatter(ok[y] / GB, ok[x], s=14, color=FEASIBLE, alpha=0.6, label="trial (fits)")
    presets = ok[ok["preset"] != ""]
    ax.scatter(presets[y] / GB, presets[x], s=40, marker="D", color=PRESET, label="preset")
    ax.plot(front[y] / GB, front[x], "o-", color=BEST, lw=1.4, ms=5, label="Pareto front")
    for r in front.itertuples():
        ax.annotate(f" #{r.number}", (getattr(r, y) / GB, getattr(r, x)), fontsize=7)
    if budget_bytes:
        ax.axvline(budget_bytes / GB, color=STALL, ls=":", lw=1)
        ax.text(budget_bytes / GB, 1.0, " budget", color=STALL, fontsize=8,
                transform=ax.get_xaxis_transform(), va="top")
    ax.set_xlabel("peak device memory (GB)")
    ax.set_ylabel(x.replace("_s", " (s)"))
    ax.set_title("Latency against memory: the Pareto front")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def baselines_figure(table: pd.DataFrame) -> Figure:
    """The best plan against each preset (and all-resident when known): latency bars,
    "does not fit" written where a plan cannot run in the budget."""
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.42 * len(table)))
    pos = np.arange(len(table))
    fits = table["fits"].to_numpy(dtype=bool)
    values = table["latency_s"].where(table["fits"], 0.0).to_numpy(dtype=float)
    colors = [BEST if k == "best" else (PRESET if k == "preset" else "#8172b2") for k in table["kind"]]
    ax.barh(pos, values, color=colors, height=0.6)
    best = values[fits].min() if fits.any() else 0.0
    for p, v, ok in zip(pos, values, fits, strict=True):
        text = f" {v:.3f} s" + (f"  (+{100 * (v / best - 1):.1f}%)" if ok and best and v > best else "")
        ax.text(v if ok else 0, float(p), text if ok else " does not fit the budget", va="center", fontsize=8,
                color="#333333" if ok else STALL)
    ax.set_yticks(pos, table["plan"])
    ax.invert_yaxis()
    ax.set_xlabel("latency (s)")
    ax.set_xlim(0, max(values.max() if len(values) else 1.0, 1e-9) * 1.25)
    ax.set_title("Best plan found against the presets")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig
