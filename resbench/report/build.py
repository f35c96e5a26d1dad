"""`build_report`: the page for any mix of saved runs and tuning studies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resbench.report.html import Section, Table, kv_table, render_page, write_page
from resbench.report.run_report import (
    comparison_section,
    run_names,
    run_page,
    run_sections,
    run_subtitle,
)
from resbench.run import Run


def build_report(runs: Sequence[Run] = (), studies: Sequence[Any] = (), *,
                 budget_curve: bool = True) -> str:
    """One run: its page. One study: its page. Several: a comparison of the runs first,
    then each run and each study in turn. `budget_curve` False leaves out the runs'
    "what a bigger budget buys" (it re-simulates the schedule: seconds for a large model)."""
    if len(runs) == 1 and not studies:
        return run_page(runs[0], budget_curve=budget_curve)
    from resbench.report.study_report import study_sections

    if len(studies) == 1 and not runs:
        study = studies[0]
        cards, secs, one = study_sections(study, "s0")
        return render_page(title=f"resbench study: {study.study_name}",
                           subtitle="Tuning results: trials, importances, the best plan against "
                                    "the presets", cards=cards, sections=secs,
                           data={"kind": "study", "runs": [], "studies": [one]})
    sections: list[Section] = []
    data: dict[str, Any] = {"kind": "mixed" if runs and studies else ("runs" if runs else "studies"),
                            "runs": [], "studies": []}
    names = run_names(runs)
    if len(runs) >= 2:
        section, table = comparison_section(runs)
        sections.append(section)
        data["comparison"] = table
    for i, run in enumerate(runs):
        cards, secs, d = run_sections(run, f"r{i}", level=3, budget_curve=budget_curve)
        sections.append(_heading(f"r{i}", f"Run {names[i]}", run_subtitle(run), cards))
        sections.extend(secs)
        data["runs"].append(d)
    for i, study in enumerate(studies):
        cards, secs, d = study_sections(study, f"s{i}", level=3)
        sections.append(_heading(f"s{i}", f"Study {study.study_name}", "", cards))
        sections.extend(secs)
        data["studies"].append(d)
    parts = [*names, *(s.study_name for s in studies)]
    return render_page(title=f"resbench: {len(parts)} results", subtitle=" · ".join(parts),
                       cards=[], sections=sections, data=data)


def _heading(sid: str, title: str, intro: str, cards: list[Any]) -> Section:
    pairs = [(c.label, f"{c.value} ({c.note})" if c.note else c.value) for c in cards]
    return Section(id=sid, title=title, intro=intro, tables=[Table("Summary", kv_table(pairs))])


def write_report(path: str | Path, runs: Sequence[Run] = (), studies: Sequence[Any] = (), *,
                 budget_curve: bool = True) -> Path:
    return write_page(build_report(runs, studies, budget_curve=budget_curve), path)
