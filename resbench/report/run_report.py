"""Report pages for saved runs: one run in full, or several side by side."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pandas as pd

from resbench.analysis import RunAnalysis
from resbench.analysis.budget import budget_curve, default_budgets, filled_curve
from resbench.analysis.compare import METRICS, run_metrics
from resbench.cost import CostModel
from resbench.hardware import profile_from_dict
from resbench.report import figures
from resbench.report.findings import run_findings
from resbench.report.html import Card, Figure, Section, Table, format_table, kv_table, render_page
from resbench.report.svg import figure_svg, style
from resbench.resources import load_presets
from resbench.run import Run
from resbench.units import format_bytes

SHORT = {"stall_wall_s": "stalled_s", "other_s": "idle_s", "prefetch_hits": "hits",
         "late_prefetches": "late", "demand_loads": "on_demand", "unused_prefetches": "unused",
         "prefetch_skips": "skipped", "evictions": "evicted"}
PERFETTO_HINT = ("Every event of this run is in its trace: `resbench export trace RUN` writes a "
                 ".json.gz that ui.perfetto.dev or chrome://tracing opens (one track per GPU "
                 "queue, arrows from each prefetch to the compute that used it).")


def _request_text(request: dict[str, Any]) -> str:
    r = request
    size = f"{r.get('height', '?')}x{r.get('width', '?')}"
    if r.get("frames", 1) != 1:
        size += f"x{r['frames']} frames"
    cfg = "" if "cfg" not in r else (", CFG " + ("on" if r["cfg"] else "off"))
    return f"{size}, {r.get('steps', '?')} steps{cfg}"


def _trace_hint(run: Run) -> str:
    trace = run.path / "trace.json.gz" if run.path is not None else None
    if trace is not None and trace.is_file():
        return (f"Every event of this run is in its trace, {trace}: open it in ui.perfetto.dev "
                "(drag the file in) or chrome://tracing (one track per GPU queue, arrows from "
                "each prefetch to the compute that used it).")
    return PERFETTO_HINT


def _budget(run: Run) -> int | None:
    return run.capacity_bytes or run.result.get("budget_bytes") or run.result.get("capacity_bytes")


def _usable(run: Run) -> int | None:
    """What the simulator lets a plan fill: the budget less the profile's fragmentation."""
    if run.result.get("capacity_bytes"):
        return int(run.result["capacity_bytes"])
    budget, frag = _budget(run), run.profile.get("fragmentation_fraction")
    return int(budget * (1.0 - frag)) if budget and frag else None


def plan_table(run: Run) -> pd.DataFrame:
    """The plan as it applies to each component of the model: strategy, knobs, source key."""
    plan = run.plan
    kinds: dict[str, str] = dict(run.schedule_summary.get("kinds", {}))
    comps = run.schedule_summary.get("components", {})
    names = list(kinds) or list(dict.fromkeys(c for c in run.events["component"] if c))
    keys = dict(plan.components)
    rows = []
    for comp in names:
        kind = kinds.get(comp, "")
        cfg = plan.config_for(comp, kind)
        source = next((k for k in (comp, kind, "default") if k in keys), "(unlisted: resident)")
        knobs = ", ".join(f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg))
        rows.append({"component": comp, "kind": kind,
                     "weight_bytes": comps.get(comp, {}).get("weight_bytes", float("nan")),
                     "strategy": cfg.name, "knobs": knobs or "–", "from [components.*]": source})
    return pd.DataFrame(rows)


def _what_ran(run: Run, sid: str) -> Section:
    p = run.profile
    plan = run.plan
    hardware = [("profile", p.get("name", "?")), ("description", p.get("description", ""))]
    for key, label, div, unit in (
            ("memory_capacity_bytes", "device memory", 1e9, "GB"),
            ("h2d_pinned_bytes_per_s", "H2D pinned", 1e9, "GB/s"),
            ("h2d_pageable_bytes_per_s", "H2D pageable", 1e9, "GB/s"),
            ("d2h_pinned_bytes_per_s", "D2H pinned", 1e9, "GB/s"),
            ("gemm_flops_per_s", "bf16 GEMM", 1e12, "TFLOP/s")):
        if key in p:
            hardware.append((label, f"{p[key] / div:,.1f} {unit}"))
    if "copy_engines" in p:
        hardware.append(("copy engines", f"{p['copy_engines']} ({'duplex' if p.get('duplex_copies') else 'one direction at a time'})"))
    budget = _budget(run)
    ran = [("model", run.model), ("request", _request_text(run.request)),
           ("device", "simulator" if run.device == "sim" else run.device),
           ("budget", format_bytes(budget) if budget else "the whole card"),
           ("plan", plan.name), ("policy", plan.policy),
           ("buffer margin", format_bytes(plan.buffer_margin_bytes)),
           ("host copies", "pinned" if plan.host.pinned else "pageable")]
    if plan.description:
        ran.append(("plan description", plan.description))
    versions = kv_table(sorted(run.versions.items()))
    return Section(id=f"{sid}-what", title="What ran", tables=[
        Table("Run", kv_table(ran)), Table("Hardware", kv_table(hardware)),
        Table("Plan, per component", format_table(plan_table(run))),
        Table("Plan TOML", f"<pre><code>{_escape(run.plan_toml)}</code></pre>", collapsed=True),
        Table("Versions", versions, collapsed=True)])


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def budget_notes(curve: pd.DataFrame, this: str, budget: int | None) -> list[str]:
    """What the curve says in words: the best plan at this budget, and what the rest of the
    card would buy if spent on resident blocks."""
    notes = []
    fit = curve[curve["fits"]]
    if budget and (fit["budget_bytes"] == budget).any():
        here = fit[fit["budget_bytes"] == budget].sort_values("latency_s", kind="stable")
        best = here.iloc[0]
        mine = here[here["plan"] == this]
        if len(mine) and best["plan"] != this:
            gain = 100 * (1 - best["latency_s"] / mine["latency_s"].iloc[0])
            notes.append(f"At this budget ({format_bytes(budget)}) the fastest of these is "
                         f"{best['plan']}: {best['latency_s']:.3f} s, {gain:.1f}% faster than this plan")
        elif len(mine):
            notes.append(f"At this budget ({format_bytes(budget)}) this plan is the fastest of these")
    filled = fit[fit["plan"] == "this plan + resident blocks"].sort_values("budget_bytes")
    if len(filled) >= 2:
        first, last = filled.iloc[0], filled.iloc[-1]
        gain = 100 * (1 - last["latency_s"] / first["latency_s"])
        notes.append(f"Spending up to {format_bytes(last['budget_bytes'])} on resident blocks takes "
                     f"this plan from {first['latency_s']:.3f} s to {last['latency_s']:.3f} s "
                     f"({gain:.1f}%)")
    return notes


def _budget_section(run: Run, sid: str) -> tuple[Section | None, pd.DataFrame | None]:
    if run.schedule is None or "schema" not in run.profile:  # a CPU run has no GPU profile
        return None, None
    profile = profile_from_dict(run.profile, where=f"run {run.name}")
    budgets = default_budgets(run.schedule, profile)
    budget = _budget(run)
    if budget and budget not in budgets and budget <= profile.memory_capacity_bytes:
        budgets = sorted({*budgets, int(budget)})
    this = f"this plan ({run.plan.name})"
    plans = {this: run.plan}
    plans.update({k: v for k, v in load_presets(kinds=run.schedule.kinds).items() if k != run.plan.name})
    curve = budget_curve(run.schedule, plans, profile, budgets)
    filled = filled_curve(run.schedule, run.plan, profile, budgets,
                          name="this plan + resident blocks")
    curve = pd.concat([curve, filled.drop(columns=["resident_blocks"])], ignore_index=True)
    with style():
        fig = figures.budget_figure(curve, budget_bytes=_budget(run), highlight=this,
                                    bound_s=float(sum(CostModel(profile).call_times(run.schedule.calls))))
    table = curve.pivot(index="budget_bytes", columns="plan", values="latency_s").reset_index()
    table.columns = [str(c) for c in table.columns]
    top = curve[curve["budget_bytes"] == curve["budget_bytes"].max()]
    never = [f"{r.plan} does not fit even {format_bytes(r.budget_bytes)} "
             f"({format_bytes(r.missing_bytes)} short)." for r in top.itertuples() if not r.fits]
    never = [n + "." for n in budget_notes(curve, this, budget)] + never
    section = Section(
        id=f"{sid}-budget", notes=never, title="What a bigger budget buys",
        intro=("The recorded schedule re-simulated at other budgets: this plan, the presets in "
               "strategies/presets, and this plan keeping as many blocks resident as each budget "
               "allows. A missing point means the plan does not fit that budget."),
        figures=[Figure(figure_svg(fig, f"{sid}-fig-budget"))],
        tables=[Table("Latency by budget (s; – = does not fit)",
                      format_table(table),
                      collapsed=True)])
    return section, curve


def run_sections(run: Run, sid: str, *, level: int = 2, budget_curve: bool = True
                 ) -> tuple[list[Card], list[Section], dict[str, Any]]:
    """Cards, sections and embedded data of one run; ids start with `sid`. `budget_curve`
    False skips re-simulating the schedule at other budgets (the slowest part)."""
    # On a real device the memory samples are the allocator's own numbers (activations
    # included) and the measured peak is in the result: adding the schedule's per-call
    # activation estimates on top would count them twice.
    simulated = run.device != "cuda"
    a = RunAnalysis(run.events, run.profile, run.schedule if simulated else None)
    s = a.summary()
    budget = _budget(run)
    measured = run.result.get("peak_device_bytes")
    peak = (s["peak_device_bytes"] if simulated else None) or int(measured or s["peak_ledger_bytes"])
    colors = figures.palette([c for c in run.events["component"] if c])
    windows = a.stages()[["stage", "start_s", "end_s"]]
    cards = [
        Card("latency", f"{s['latency_s']:.3f} s",
             f"{100 * (s['ratio_to_bound'] - 1):.1f}% above the {s['bound']} bound {s['lower_bound_s']:.3f} s"),
        Card("stalled on copies", f"{s['stall_s']:.3f} s", f"{100 * s['stall_s'] / s['latency_s']:.1f}% of the latency"),
        Card("copied to the GPU", format_bytes(s["h2d_bytes"]),
             f"at {s['achieved_h2d_bytes_per_s'] / 1e9:.1f} GB/s ({100 * s['h2d_fraction_of_peak']:.0f}% of peak)"
             if s["h2d_bytes"] else "nothing moved"),
        Card("peak device memory", format_bytes(peak),
             f"of a {format_bytes(budget)} budget" if budget else ""),
        Card("pinned host memory", format_bytes(int(run.result.get("pinned_host_bytes", s["pinned_host_bytes"])))),
        Card("prefetches in time", f"{s['prefetch_hits']}",
             f"{s['late_prefetches']} late, {s['demand_loads']} on demand, {s['unused_prefetches']} unused"),
    ]
    sections = [Section(id=f"{sid}-findings", title="Findings", bullets=run_findings(a, budget_bytes=budget))]
    sections.append(_what_ran(run, sid))
    with style():
        zoom = figures.zoom_window(run.events, windows)
        timeline = figures.timeline_figure(run.events, windows, a.steps(), colors, zoom)
        peak_table = a.resident_at_peak()
        top = peak_table.iloc[0] if len(peak_table) else None
        note = f"peak {format_bytes(peak)}" + (f": {top['component']}" if top is not None else "")
        memory = figures.memory_figure(
            a.memory(), windows, budget_bytes=budget, usable_bytes=_usable(run),
            margin_bytes=run.plan.buffer_margin_bytes if run.plan.policy == "dynamic" else 0,
            activations=a.activations(), peak_note=note)
        breakdown = figures.breakdown_figure(a.stages(), a.steps(), colors)
        components = figures.components_figure(a.components(), colors)
    sections.append(Section(
        id=f"{sid}-timeline", title="Timeline",
        intro=("Rows are the GPU's queues: the compute stream (coloured by component), the time it "
               "spent waiting for a copy (red), and the copy engines. In the whole-request view a "
               "bar's height is the share of that instant the queue was busy (full height: always); "
               "the zoom shows every unit call and copy. Marks on a \"decisions\" row are residency "
               "decisions (skipped prefetches, evictions, components kept)."),
        figures=[Figure(figure_svg(timeline, f"{sid}-fig-timeline"), _trace_hint(run))]))
    sections.append(Section(
        id=f"{sid}-memory", title="Device memory",
        intro=("The line is the allocator ledger (weights on the device, staging buffers, request "
               "state); the shaded area adds the working memory of the call running at that moment, "
               "which is what sets the peak." if a.activations() is not None else
               "The allocator ledger: weights on the device, staging buffers, request state "
               "(activations are not in this trace; the run's peak includes them)."),
        figures=[Figure(figure_svg(memory, f"{sid}-fig-memory"))],
        tables=[Table("What held the device at the peak", format_table(peak_table.rename(columns={
                    "units": "units_on_device", "unit_bytes": "their_weight_bytes",
                    "bytes": "allocated_bytes"}), hide=("t_s",)),
                      note=f"at {float(top['t_s']):.3f} s" if top is not None else "")]))
    stage_cols = ["stage", "wall_s", "compute_s", "stall_wall_s", "exposed_copy_s", "other_s",
                  "transfer_s", "exposed_transfer_s", "h2d_bytes", "d2h_bytes"]
    comp_cols = ["component", "compute_s", "transfer_s", "exposed_transfer_s", "stall_s",
                 "h2d_bytes", "d2h_bytes", "prefetch_hits", "late_prefetches", "demand_loads",
                 "unused_prefetches", "prefetch_skips", "evictions"]
    stages = a.stages()
    stages = stages[(stages["stage"] != "setup") | (stages["wall_s"] > 0) | (stages["loads"] > 0)]
    optional = ("exposed_copy_s", "other_s", "d2h_bytes", "unused_prefetches", "prefetch_skips",
                "evictions", "late_prefetches")
    sections.append(Section(
        id=f"{sid}-breakdown", title="Where the time went",
        intro=("Each stage's wall time splits into compute, stalls (compute waiting on a copy), "
               "copies that ran while compute was neither running nor waiting, and idle time. "
               "Exposed transfer = copy time not overlapped by any compute."),
        figures=[Figure(figure_svg(breakdown, f"{sid}-fig-breakdown")),
                 Figure(figure_svg(components, f"{sid}-fig-components"))],
        tables=[Table("Per stage", format_table(stages[stage_cols].rename(columns=SHORT),
                                                drop_zero=optional + ("idle_s", "exposed_copy_s"))),
                Table("Per component", format_table(a.components()[comp_cols].rename(columns=SHORT),
                                                    drop_zero=optional + tuple(SHORT.values())),
                      note="Copies of each unit: hits were prefetched and ready in time; late were "
                           "prefetched but still waited for; on demand were copied when needed; "
                           "unused were copied in and released without being used.")]))
    steps = a.steps()
    if len(steps):
        sections.append(Section(id=f"{sid}-steps", title="Denoising steps", tables=[
            Table(f"{len(steps)} steps", format_table(steps), collapsed=len(steps) > 12)]))
    sections.append(Section(
        id=f"{sid}-yardsticks", title="Yardsticks",
        intro="Achieved copy bandwidth against the hardware profile, and the latency against "
              "max(total compute, H2D bytes / pinned bandwidth).",
        tables=[Table("Copy bandwidth", format_table(a.bandwidth())),
                Table("Lower bound", format_table(a.lower_bound())),
                Table("Events", format_table(a.events()), collapsed=True)]))
    budget_section, curve = _budget_section(run, sid) if budget_curve else (None, None)
    if budget_section is not None:
        sections.append(budget_section)
        sections[0].bullets += [n + " (see What a bigger budget buys)." for n in
                                budget_notes(curve, f"this plan ({run.plan.name})", budget)]
    for sec in sections:
        sec.level = level
    data = {"name": run.name, "meta": run.meta(), "summary": s, "tables": {
        "stages": a.stages(), "components": a.components(), "steps": steps,
        "resident_at_peak": peak_table, "bandwidth": a.bandwidth(),
        "lower_bound": a.lower_bound(), "events": a.events(),
        "budget_curve": curve if curve is not None else []}}
    return cards, sections, data


def run_subtitle(run: Run) -> str:
    budget = _budget(run)
    where = "simulated on " if run.device == "sim" else "on "
    return (f"{run.model}, {_request_text(run.request)} — plan {run.plan.name} — "
            f"{where}{run.profile.get('name', run.device)}"
            + (f", {format_bytes(budget)} budget" if budget else ""))


def comparison_table(runs: Sequence[Run]) -> pd.DataFrame:
    metrics = [run_metrics(r) for r in runs]
    rows = []
    for metric, better in METRICS:
        row: dict[str, Any] = {"metric": metric, "better": better}
        for name, m in zip(run_names(runs), metrics, strict=True):
            row[name] = m.get(metric)
        rows.append(row)
    return pd.DataFrame(rows)


def run_names(runs: Sequence[Run]) -> list[str]:
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [f"{i}: {n}" for i, n in enumerate(names)]


def comparison_section(runs: Sequence[Run]) -> tuple[Section, pd.DataFrame]:
    """Runs side by side: a table of metrics and overlaid bars."""
    names = run_names(runs)
    metrics = pd.DataFrame([{**run_metrics(r), "capacity_bytes": _budget(r) or 0} for r in runs])
    with style():
        fig = figures.compare_figure(names, metrics)
    table = comparison_table(runs)
    shown = table.drop(columns=["better"]).set_index("metric").T.reset_index().rename(
        columns={"index": "run"})
    return Section(id="compare", title="Comparison", figures=[Figure(figure_svg(fig, "cmp-fig"))],
                   tables=[Table("Runs side by side", format_table(shown))]), table


def run_page(run: Run, *, budget_curve: bool = True) -> str:
    """The page of one run."""
    cards, sections, data = run_sections(run, "r0", budget_curve=budget_curve)
    return render_page(title=f"resbench: {run.name}", subtitle=run_subtitle(run), cards=cards,
                       sections=sections, data={"kind": "run", "runs": [data], "studies": []})
