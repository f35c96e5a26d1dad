from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from resbench.report.build import build_report, write_report
from resbench.report.html import embed_json, format_table, load_report_data
from resbench.report.study import load_studies, trials_frame
from resbench.run import load_run
from tests.report.helpers import make_study

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""", re.I)


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.refs: list[str] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if "id" in d:
            self.ids.append(d["id"])
        for key in ("href", "xlink:href"):
            if (d.get(key) or "").startswith("#"):
                self.refs.append(d[key][1:])
        if tag == "script":
            self.scripts.append(d)


def check_page(text: str) -> _Ids:
    """Self-contained: no external resource, unique ids, every #ref resolves, no script
    but the JSON data."""
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    namespaces = re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", text)
    assert "http://" not in namespaces and "https://" not in namespaces
    parser = _Ids()
    parser.feed(text)
    dupes = {i for i in parser.ids if parser.ids.count(i) > 1}
    assert not dupes, sorted(dupes)[:10]
    missing = set(parser.refs) - set(parser.ids)
    assert not missing, sorted(missing)[:10]
    assert parser.scripts == [{"type": "application/json", "id": "resbench-data"}]
    assert "Content-Security-Policy" in text
    return parser


@pytest.fixture(scope="module")
def run_page(saved_run):
    return build_report([load_run(saved_run)])


def test_run_page_is_self_contained_and_reproducible(run_page, saved_run):
    parser = check_page(run_page)
    assert sum(i.startswith("r0-fig-") for i in parser.ids) >= 5  # one root id per figure
    assert build_report([load_run(saved_run)]) == run_page  # fixed svg.hashsalt, no dates
    for heading in ("Findings", "Timeline", "Device memory", "Where the time went",
                    "What a bigger budget buys"):
        assert f">{heading}</h2>" in run_page


def test_embedded_data_reads_back(run_page, saved_run, sim_run, tmp_path):
    path = tmp_path / "r.html"
    path.write_text(run_page)
    data = load_report_data(path)
    _, result, _ = sim_run
    assert data["schema"] == 1 and data["kind"] == "run"
    run = data["runs"][0]
    assert run["summary"]["latency_s"] == pytest.approx(result.latency_s)
    assert run["meta"]["plan"]["name"] == "synthetic-stream"
    assert {r["stage"] for r in run["tables"]["stages"]} >= {"text_encode", "denoise", "decode"}
    assert run["tables"]["budget_curve"]


def test_embedded_json_cannot_close_the_script():
    text = embed_json({"name": "</script><b>&"})
    assert "<" not in text and ">" not in text and "&" not in text


def test_tables_take_units_from_column_names():
    import pandas as pd

    html = format_table(pd.DataFrame({"stage": ["a"], "wall_s": [1.23456], "h2d_bytes": [2 * 10**9],
                                      "share": [0.5], "count": [3], "d2h_bytes": [0]}),
                        drop_zero=("d2h_bytes",))
    assert "wall (s)" in html and "1.235" in html and "h2d (GB)" in html and "2.00" in html
    assert "share (%)" in html and "50.0" in html and "d2h" not in html


def _data(text: str) -> dict:
    import json

    return json.loads(re.search(r'id="resbench-data">(.*?)</script>', text, re.S).group(1))


def test_several_runs_are_compared(saved_run):
    run = load_run(saved_run)
    text = build_report([run, run], budget_curve=False)
    check_page(text)
    assert ">Comparison</h2>" in text and "0: synthetic" in text and "1: synthetic" in text
    assert "What a bigger budget buys" not in text


def test_study_page(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    make_study(storage)
    [study] = load_studies(str(tmp_path / "s.db"))
    trials = trials_frame(study)
    assert trials["feasible"].sum() == 10 and (trials["preset"] != "").sum() == 2
    out = write_report(tmp_path / "study.html", studies=[study])
    text = out.read_text()
    check_page(text)
    for heading in ("Tuning history", "Parameter importances", "Best plan against the presets"):
        assert f">{heading}</h2>" in text
    assert "budget curve, which re-simulates the schedule, is left out" in text
    data = load_report_data(out)
    assert data["kind"] == "study" and data["studies"][0]["best"]["number"] == 3


def test_pareto_study_and_a_mixed_page(tmp_path, saved_run):
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    make_study(storage, "pareto", two_objectives=True)
    studies = load_studies(storage, "pareto")
    text = build_report([load_run(saved_run)], studies)
    check_page(text)
    assert "Pareto front" in text and "Run synthetic" in text and "Study pareto" in text


def test_study_with_context_draws_the_budget_curve(tmp_path):
    storage = f"sqlite:///{tmp_path / 'c.db'}"
    make_study(storage, "ctx", context={
        "model": "wan2.2", "request": {"height": 64, "width": 64, "frames": 5, "steps": 2},
        "scale": 0.05, "hardware": "h100-80g", "budget_bytes": 2 * 10**9})
    text = build_report([], load_studies(storage))
    check_page(text)
    assert "s0-fig-budget" in text
    kinds = {(r["plan"], r["kind"]) for r in _data(text)["studies"][0]["baselines"]}
    assert ("all-resident", "simulated") in kinds  # not a trial: simulated at the budget


def test_committed_example_is_self_contained():
    from pathlib import Path

    example = Path(__file__).parents[2] / "reports" / "examples" / "wan2.2-h100-80g-48GB-sim.html"
    if not example.is_file():
        pytest.skip("no committed example")
    check_page(example.read_text())
    data = load_report_data(example)
    assert data["runs"][0]["meta"]["model"] == "wan2.2-t2v-a14b"
    assert data["runs"][0]["meta"]["capacity_bytes"] == 48 * 10**9


def test_the_budget_curve_resimulates_the_schedule_of_the_studys_engine(tmp_path, monkeypatch):
    """Regression: the curve re-recorded every study with the zoo, so a diffusers-engine
    study (the default for FLUX and Wan2.2) was redrawn on another schedule, and a model
    only the diffusers engine builds (LTX-2) crashed the report."""
    from resbench.engines.base import make_engine as real_make_engine

    used: list[str | None] = []

    def recording(name, spec, **kw):
        used.append(name)
        return real_make_engine("zoo", spec, **kw)

    monkeypatch.setattr("resbench.engines.base.make_engine", recording)
    storage = f"sqlite:///{tmp_path / 'e.db'}"
    make_study(storage, "eng", context={
        "model": "wan2.2", "request": {"height": 64, "width": 64, "frames": 5, "steps": 2},
        "scale": 0.05, "hardware": "h100-80g", "budget_bytes": 2 * 10**9,
        "constraints": {"engine": "diffusers", "device": "sim"}})
    text = build_report([], load_studies(storage))
    assert "s0-fig-budget" in text and used == ["diffusers"]
