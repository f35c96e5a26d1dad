"""`benchmarks/engines_report.py`: several runs merged (a measured row before a copied or
skipped one, a peer mode's fastest, else the newest run) and each goal's figure, on rows
written by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.engines_report import goals, merge, render

GB = 10**9


def run(tmp_path: Path, name: str, date: str, rows: list[dict[str, Any]]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "cells.json").write_text(json.dumps(
        {"schema": 1, "environment": {"date": date, "argv": ["engines.py", name]}, "rows": rows}))
    return folder


def row(cell: str, budget: Any, name: str, kind: str, status: str, **more: Any) -> dict[str, Any]:
    return {"cell": cell, "budget_gb": budget, "row": name, "kind": kind, "status": status,
            "budget_bytes": None if budget == "card" else int(budget * GB), **more}


def test_runs_merge_measured_first_then_newest_and_the_goals_are_figured(tmp_path: Path) -> None:
    old = run(tmp_path, "run1", "2026-11-30 02:00:00 UTC", [
        row("wan", "card", "no-offload", "reference", "ok", latency_s=10.0),
        row("wan", 48.0, "resbench-tuned", "tuned", "ok", latency_s=10.5, lower_bound_s=10.0,
            pinned_bytes=50 * GB, plan_host_bytes=50 * GB),
        row("wan", 48.0, "model-offload", "peer", "ok", latency_s=14.0, fit=True),
        row("flux", 24.0, "resbench-tuned", "tuned", "ok", latency_s=2.2),
        row("wan", 24.0, "accelerate-dispatch", "peer", "ok", latency_s=40.0)])
    new = run(tmp_path, "run2", "2026-11-30 06:00:00 UTC", [
        row("wan", "card", "no-offload", "reference", "ok", latency_s=10.1),  # newest wins
        row("wan", 48.0, "resbench-tuned", "tuned", "ok", latency_s=10.2, lower_bound_s=10.1,
            pinned_bytes=52 * GB, plan_host_bytes=50 * GB),
        row("wan", 48.0, "model-offload", "peer", "skipped", reason="time"),  # run1's stays
        row("wan", 24.0, "accelerate-dispatch", "peer", "ok", latency_s=50.0),
        row("flux", 24.0, "resbench-tuned", "tuned", "ok", latency_s=2.0, measured_at=16.0)])
    frame, envs = merge([old, new])
    got = {(r.cell, str(r.budget_gb), r.row): (r.run, r.latency_s) for r in frame.itertuples()}
    assert got[("wan", "card", "no-offload")] == ("run2", 10.1)
    assert got[("wan", "48.0", "resbench-tuned")] == ("run2", 10.2)
    assert got[("wan", "48.0", "model-offload")] == ("run1", 14.0)
    assert got[("flux", "24.0", "resbench-tuned")] == ("run1", 2.2)  # measured, not copied
    assert got[("wan", "24.0", "accelerate-dispatch")] == ("run1", 40.0)  # a peer's fastest
    assert [e["run"] for e in envs] == ["run1", "run2"]

    g = goals(frame).set_index(["cell", "budget_gb"])
    wan = g.loc[("wan", 48.0)]
    assert wan["regime"] == "transfer" and wan["best_peer"] == "model-offload"
    assert abs(wan["tuned_over_best_peer"] - 10.2 / 14.0) < 1e-9
    assert abs(wan["tuned_over_bound"] - 10.2 / 10.1) < 1e-9
    assert abs(wan["pinned_over_plan_host"] - 1.04) < 1e-9
    text = render(frame, envs)
    assert "* `run1`:" in text and "0.73 (met, goal ≤ 0.80)" in text


def test_a_compute_bound_cell_is_held_to_the_card_and_to_every_peer(tmp_path: Path) -> None:
    folder = run(tmp_path, "run3", "2026-11-30 06:00:00 UTC", [
        row("wan81", "card", "no-offload", "reference", "ok", latency_s=30.0, regime="compute"),
        row("wan81", 48.0, "resbench-tuned", "tuned", "ok", latency_s=30.6, regime="compute"),
        row("wan81", 48.0, "model-offload", "peer", "ok", latency_s=40.0, fit=True,
            regime="compute")])
    frame, envs = merge([folder])
    g = goals(frame).iloc[0]
    assert (g["regime"], g["peer_goal"]) == ("compute", 1.0)
    assert abs(g["tuned_over_card"] - 1.02) < 1e-9
    assert "1.02 (met, goal ≤ 1.03)" in render(frame, envs)


def test_a_run_without_the_reference_row_gets_its_bound_from_the_cells_reference(
        tmp_path: Path) -> None:
    cell = {"dit_bytes": 28 * GB, "dit_forwards": 8}
    old = run(tmp_path, "run3", "2026-11-30 05:00:00 UTC", [
        row("wan", "card", "no-offload", "reference", "ok", latency_s=28.7,
            weights_bytes=69 * GB, peak_allocated_bytes=79 * GB, **cell),
        row("wan", 48.0, "model-offload", "peer", "ok", latency_s=96.0, lower_bound_s=28.7,
            **cell)])
    new = run(tmp_path, "run4", "2026-11-30 08:30:00 UTC", [  # --rows 24:tuned,16:...
        row("wan", 24.0, "resbench-tuned", "tuned", "ok", latency_s=29.1, **cell),
        row("wan", 16.0, "resbench-variant", "variant", "ok", latency_s=31.0, **cell)])
    frame, _ = merge([old, new])
    got = {(str(r.budget_gb), r.row): (r.run, r.lower_bound_s) for r in frame.itertuples()}
    # activations 79 - 69 = 10 GB: at 24 GB the DiT has 14 GB of room, 14 GB must cross per
    # forward (8 × 14 GB ÷ 55.1 GB/s = 2.03 s < 28.7 s of compute); at 16 GB, 6 GB of room
    assert got[("24.0", "resbench-tuned")] == ("run4", 28.7)
    assert got[("16.0", "resbench-variant")] == ("run4", 28.7)
    assert got[("48.0", "model-offload")] == ("run3", 28.7)
    moved = frame.set_index("row").loc["resbench-variant", "must_move_bytes"]
    assert moved == 8 * 22 * GB


def test_runs_whose_folders_share_a_name_are_told_apart(tmp_path: Path) -> None:
    for phase in ("b", "c"):
        (tmp_path / phase).mkdir()
        run(tmp_path / phase, "w0", f"2026-11-30 08:0{len(phase)}:00 UTC", [
            row("wan", 24.0, "group-leaf-stream", "peer", "cut" if phase == "b" else "ok",
                latency_s=None if phase == "b" else 6.0)])
    frame, envs = merge([tmp_path / "b" / "w0", tmp_path / "c" / "w0"])
    assert [e["run"] for e in envs] == ["b/w0", "c/w0"]
    assert frame.loc[frame["row"] == "group-leaf-stream", "run"].tolist() == ["c/w0"]
