"""Report sections for a tuning study."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from resbench.report import figures, study_figures
from resbench.report.html import Card, Figure, Section, Table, format_table, kv_table
from resbench.report.study import (
    baselines,
    best_so_far,
    best_trial,
    importances,
    metric_names,
    pareto_front,
    study_context,
    trial_plan,
    trials_frame,
)
from resbench.report.svg import figure_svg, style
from resbench.units import format_bytes, parse_bytes

CONTEXT_HINT = ("The study does not say which model, request and hardware it tuned for "
                "(study user attributes `model`, `request`, `hardware`, `budget_bytes`), so the "
                "budget curve, which re-simulates the schedule, is left out.")


def _plan_rows(plan: Any) -> pd.DataFrame:
    import dataclasses

    rows = []
    for key, cfg in plan.components:
        knobs = ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))
        rows.append({"[components.*]": key, "strategy": cfg.name, "knobs": knobs or "–"})
    return pd.DataFrame(rows)


def study_profile(ctx: dict[str, Any]) -> Any:
    """The hardware profile a study was tuned on: stored whole in the study (a profile read
    from a file has a name no preset has), else the preset it names (older studies)."""
    from resbench.hardware import get_profile, profile_from_dict

    if isinstance(ctx.get("hardware_profile"), dict):
        return profile_from_dict(ctx["hardware_profile"], where="the study's hardware profile")
    return get_profile(ctx.get("hardware") or "h100-80g")


def _budget_curve(study: optuna.Study, ctx: dict[str, Any], best_plan: Any,
                  sid: str) -> tuple[Section, pd.DataFrame | None]:
    title = "What a bigger budget buys"
    if not {"model", "request"} <= ctx.keys() or best_plan is None:
        why = CONTEXT_HINT if best_plan is not None else "No feasible trial with a stored plan."
        return Section(id=f"{sid}-budget", title=title, notes=[why]), None
    from resbench.analysis.budget import budget_curve, default_budgets, filled_curve
    from resbench.engines.base import make_engine
    from resbench.models import get_model
    from resbench.pipeline import Request
    from resbench.resources import load_presets

    spec = get_model(ctx["model"])
    request = Request.for_model(spec, **dict(ctx["request"]))
    # the schedule the trials were scored on: the study's engine (the zoo for studies
    # older than engines), with a merged LoRA's copy where the simulator planned one
    engine = make_engine(ctx.get("engine", "zoo"), spec, scale=float(ctx.get("scale", 1.0)))
    schedule = engine.record(request)
    if ctx.get("device", "sim") == "sim":
        schedule = engine.merged_refine(schedule)
    profile = study_profile(ctx)
    budgets = default_budgets(schedule, profile)
    budget = ctx.get("budget_bytes")
    budget = parse_bytes(budget) if isinstance(budget, str) else budget
    if budget and budget <= profile.memory_capacity_bytes:
        budgets = sorted({*budgets, int(budget)})
    plans = {"best plan": best_plan, **load_presets(kinds=schedule.kinds)}
    curve = budget_curve(schedule, plans, profile, budgets)
    filled = filled_curve(schedule, best_plan, profile, budgets, name="best plan + resident blocks")
    curve = pd.concat([curve, filled.drop(columns=["resident_blocks"])], ignore_index=True)
    with style():
        fig = figures.budget_figure(curve, budget_bytes=budget, highlight="best plan")
    return Section(id=f"{sid}-budget", title=title,
                   intro=("The best plan and the presets re-simulated at other budgets, and the best "
                          "plan keeping as many blocks resident as each budget allows. The tuner "
                          "would find other plans at other budgets: this is a floor on what they buy."),
                   figures=[Figure(figure_svg(fig, f"{sid}-fig-budget"))]), curve


def with_simulated_presets(base: pd.DataFrame, curve: pd.DataFrame | None,
                           budget: Any) -> pd.DataFrame:
    """`base` plus the presets the budget curve simulated at the study's budget that are
    not trials of the study (those that did not fit, all-resident)."""
    if curve is None or not budget:
        return base
    budget = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    here = curve[(curve["budget_bytes"] == budget) & ~curve["plan"].str.startswith("best plan")]
    have = {p.split(" (")[0] for p in base["plan"]} | {
        p.split(", ")[-1].rstrip(")") for p in base["plan"] if p.startswith("best (")}
    extra = [{"plan": r.plan, "kind": "simulated", "latency_s": r.latency_s,
              "peak_device_bytes": r.peak_device_bytes if r.fits else float("nan"), "fits": bool(r.fits)}
             for r in here.itertuples() if r.plan not in have]
    return pd.concat([base, pd.DataFrame(extra, columns=base.columns)], ignore_index=True) if extra else base


def study_sections(study: optuna.Study, sid: str, *, level: int = 2
                   ) -> tuple[list[Card], list[Section], dict[str, Any]]:
    """Cards, sections and embedded data of one study; ids start with `sid`."""
    names = metric_names(study)
    metric = names[0]
    trials = trials_frame(study)
    feasible = trials[trials["feasible"]] if len(trials) else trials
    best = best_trial(study)
    best_plan = trial_plan(best) if best is not None else None
    base = baselines(study)
    ctx = study_context(study)
    budget = ctx.get("budget_bytes")
    if budget is None and len(trials) and "capacity_bytes" in trials:
        budget = None  # the simulator's usable capacity, not the budget the user gave
    cards = [Card("trials", f"{len(trials)}", f"{len(feasible)} fit the budget")]
    bullets = [f"{len(trials)} trials, {len(feasible)} of them fit the budget"
               + (f"; objectives: {', '.join(names)}." if len(names) > 1 else ".")]
    if best is not None:
        peak = best.user_attrs.get("peak_device_bytes")
        cards.append(Card("best latency", f"{best.values[0]:.3f} s", f"trial {best.number}"
                          + (f" = preset {best.user_attrs['preset']}" if best.user_attrs.get("preset") else "")))
        if peak:
            cards.append(Card("its peak memory", format_bytes(peak)))
        presets = base[(base["kind"] == "preset") & base["fits"]]
        same = best.user_attrs.get("preset")
        if same:
            bullets.append(f"The best plan (trial {best.number}, {best.values[0]:.3f} s) is the preset "
                           f"{same}: the search found nothing faster in {len(trials)} trials.")
            presets = presets[presets["plan"] != same]
        if len(presets):
            top = presets.sort_values("latency_s").iloc[0]
            gain = 100 * (top["latency_s"] / best.values[0] - 1)
            cards.append(Card("best other preset" if same else "best preset",
                              f"{top['latency_s']:.3f} s", f"{top['plan']} (+{gain:.1f}%)"))
            lead = ("The next best preset" if same else
                    f"The best plan (trial {best.number}) takes {best.values[0]:.3f} s; the best preset")
            bullets.append(f"{lead}, {top['plan']}, takes {top['latency_s']:.3f} s ({gain:.1f}% slower).")
        else:
            bullets.append(f"The best plan (trial {best.number}) takes {best.values[0]:.3f} s; no "
                           "preset trial is in the study to compare with.")
    else:
        bullets.append("No trial fits the budget: see the tuner's message for the smallest budget "
                       "that would.")
    sections = [Section(id=f"{sid}-findings", title="Findings", bullets=bullets)]
    what = [("study", study.study_name), ("objectives", ", ".join(names))]
    what += [(k, v) for k, v in ctx.items() if k != "hardware_profile"]
    tables = [Table("Study", kv_table(what))]
    if best_plan is not None and best is not None:
        tables.append(Table(f"Best plan: {best_plan.name} (policy {best_plan.policy}, margin "
                            f"{format_bytes(best_plan.buffer_margin_bytes)})",
                            format_table(_plan_rows(best_plan))))
        tables.append(Table("Best plan TOML", f"<pre><code>{_escape(best.user_attrs['plan_toml'])}</code></pre>",
                            collapsed=True))
    sections.append(Section(id=f"{sid}-what", title="What was tuned", tables=tables))
    figs = []
    history = best_so_far(feasible, metric)
    with style():
        if len(feasible):
            figs.append(Figure(figure_svg(study_figures.history_figure(trials, history, metric),
                                          f"{sid}-fig-history"),
                               "Each point is a trial that fits; the line is the best found so far."))
    sections.append(Section(id=f"{sid}-history", title="Tuning history", figures=figs,
                            notes=[] if figs else ["No trial fits the budget yet."]))
    imp = importances(study)
    fig = (study_figures.importance_figure(study, list(imp["param"].head(12)), metric)
           if len(imp) else None)
    sections.append(Section(
        id=f"{sid}-importance", title="Parameter importances",
        intro=("How much each knob explains the latency of the trials that fit (optuna's default "
               "evaluator); the twelve most important are drawn, all are in the table."),
        figures=[Figure(figure_svg(fig, f"{sid}-fig-importance"))] if fig is not None else [],
        tables=[Table("Importances", format_table(imp), collapsed=True)] if len(imp) else [],
        notes=[] if len(imp) else ["Too few trials that fit to rank the parameters."]))
    front = None
    if len(names) >= 2:
        front = pareto_front(trials, names[0], names[1])
        with style():
            pf = study_figures.pareto_figure(trials, front, names[0], names[1], budget)
        sections.append(Section(id=f"{sid}-pareto", title="Pareto front",
                                figures=[Figure(figure_svg(pf, f"{sid}-fig-pareto"))],
                                tables=[Table("Trials on the front", format_table(
                                    front[["number", *names[:2], "preset"]]))]))
    budget_section, curve = _budget_curve(study, ctx, best_plan, sid)
    base = with_simulated_presets(base, curve, ctx.get("budget_bytes"))
    if len(base):
        with style():
            bf = study_figures.baselines_figure(base)
        sections.append(Section(id=f"{sid}-presets", title="Best plan against the presets",
                                intro="Presets reproduce other engines' offload modes. Those that "
                                      "fit were queued as the study's first trials; the others "
                                      "(and all-resident) were simulated at the study's budget "
                                      "when the study says what it tuned for.",
                                figures=[Figure(figure_svg(bf, f"{sid}-fig-presets"))],
                                tables=[Table("Plans", format_table(base))]))
    sections.append(budget_section)
    cols = [c for c in ("number", "state", "feasible", "preset", *names, "stall_s",
                        "pinned_host_bytes") if c in trials]
    sections.append(Section(id=f"{sid}-trials", title="All trials", tables=[
        Table(f"{len(trials)} trials", format_table(trials[cols]) if len(trials) else "", collapsed=True)]))
    for s in sections:
        s.level = level
    data = {"name": study.study_name, "context": ctx, "metrics": names, "trials": trials,
            "importances": imp, "baselines": base, "pareto_front": front if front is not None else [],
            "budget_curve": curve if curve is not None else [],
            "best": {"number": best.number, "values": best.values, "user_attrs": best.user_attrs}
            if best is not None else None}
    return cards, sections, data


def _escape(text: str) -> str:
    import html

    return html.escape(text)
