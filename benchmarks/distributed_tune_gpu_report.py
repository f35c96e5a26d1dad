"""The results table of `distributed_tune_gpu.py` runs, from their OUTDIRs.

    python benchmarks/distributed_tune_gpu_report.py OUTDIR... [--out table.md]

Reads every `summary.json` (one run: a document per storage) and `summary-<storage>.json`
(older runs: one storage each) in the OUTDIRs, or summary files named directly, and prints a
Markdown table, one row per study (workers, GPUs, storage, trials/min counted from each
worker's first trial, the best feasible latency within the first window of the study,
duplicates, lost, trials left RUNNING, the kill test, start-up, host memory, card), then each
worker's start-up steps, the 1 -> N speed-up per storage over every run given, and the setup
(command, card, versions, date).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resbench.tune.trial_log import read_trial_log  # noqa: E402

GiB = 2**30
HEADER = ("| workers | GPUs | storage | trials/min (first {w} s of each worker) | best latency at {w} s (s) "
          "| duplicates | lost | left RUNNING | kill test (SIGKILL of one worker) "
          "| start-up (s) | host memory per worker, peak RSS (GiB) | host used, before -> peak (GiB) | card |")
STEPS = ("Start-up steps (seconds after launch at which each line of the worker's log appeared: "
         "`budget` imports done; `study` storage opened; `recording` schedule being recorded; "
         "`searching` weights built and pinned, the frugal and all-resident plans measured):")
RULE = "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- |"


def summaries(paths: Iterable[Path]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("summary*.json")) if p.is_dir() else [p]
    if not files:
        raise SystemExit("no summary*.json found; pass the OUTDIRs of distributed_tune_gpu.py")
    docs = []
    for f in files:
        doc = json.loads(f.read_text())
        for d in doc["storages"] if doc.get("schema") == 2 else [doc]:
            d["_dir"] = f.parent  # where its logs.tgz is
            docs.append(d)
    return docs


def feasible_in_window(doc: dict[str, Any], phase: dict[str, Any]) -> int | None:
    """Feasible trials the workers finished within their own windows: from the summary, or
    (runs before it counted them) from the workers' logs in the `logs.tgz` beside it; a
    worker's log lists its trials in the order they finished, so its first `per_worker_own`
    lines are the ones inside its window. None: neither is there."""
    w = phase["window"]
    if "feasible_own" in w:
        return int(w["feasible_own"])
    tgz = Path(doc.get("_dir", ".")) / "logs.tgz"
    if "phase" not in phase or "per_worker_own" not in w or not tgz.exists():
        return None
    folder = f"dt/p{phase['phase']}-{phase['storage']}-{phase['workers']}w"
    n = 0
    with tarfile.open(tgz) as tar:
        for i, wid in enumerate(phase["worker_ids"]):
            try:
                f = tar.extractfile(f"{folder}/worker-{i}.log")
            except KeyError:
                return None
            if f is None:
                return None
            records = read_trial_log(f.read().decode(errors="replace"))
            n += sum(bool(r.feasible) for r in records[:w["per_worker_own"].get(wid, 0)])
    return n


def rate(window: dict[str, Any]) -> float:
    """Trials/min from each worker's first trial (older runs: from the study's first)."""
    return window.get("trials_per_min_own", window["trials_per_min"])


def finished(window: dict[str, Any]) -> int:
    own = window.get("per_worker_own")
    return sum(own.values()) if own is not None else window["finished"]


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def kill_text(phase: dict[str, Any]) -> str:
    kill = phase.get("kill")
    if not kill:
        return "–"
    survivors = [c for i, c in enumerate(phase["exit_codes"]) if i != kill["worker"]]
    exits = f"survivor exit {', '.join(str(c) for c in survivors)}"
    if not kill["trials"]:
        return f"no trial of it was RUNNING at the kill (between trials); {exits}"
    trials = ", ".join(str(t) for t in kill["trials"])
    states = ", ".join(str(s) for s in kill["states_after"])
    after = kill.get("ended_after_s")
    when = "still RUNNING at the end" if after is None else f"{after:.0f} s after the kill"
    lock = ("; it died holding the journal's lock: the others waited out the lock's grace"
            if kill.get("journal_lock_forced") else "")
    return f"trial {trials}: {states}, {when}, by {kill['by']}; {exits}{lock}"



def card(summary: dict[str, Any]) -> str:
    gpus = summary.get("gpu", {}).get("gpus") or []
    names = sorted({g["name"] for g in gpus})
    return ", ".join(names) if names else "no GPU (simulator workers)"


def row(summary: dict[str, Any], phase: dict[str, Any]) -> str:
    w = phase["window"]
    mem = phase["host_memory"]
    rss = " + ".join(_num(p.get("VmRSS", 0) / GiB, "{:.1f}") for p in mem["per_worker_peak_bytes"])
    startup = ", ".join(_num(s, "{:.0f}") for s in phase["startup_s"])
    stopped = phase.get("interrupted")
    spec = phase.get("phase_spec", "")
    others = [g for g in spec.split("+") if g and not g.startswith(phase["storage"] + "@")]
    label = phase["storage"] + (f" (stopped early: {stopped})" if stopped else "") + (
        f" (phase {phase['phase']}, beside {' + '.join(others)})" if others else
        f" (phase {phase['phase']})" if "phase" in phase else "")
    shared = phase.get("gpus_shared")
    seen = ("" if shared is None else " (nvidia-smi: SHARED)" if shared else
            " (nvidia-smi: one worker per GPU)" if len(phase["gpus"]) > 1 else "")
    n_phase = f" ({mem['phase_workers']} workers)" if "phase_workers" in mem else ""
    feas = feasible_in_window(summary, phase)
    busy = w.get("busy_s_own")
    detail = (f"; {feas} feasible" if feas is not None else "") + (
        f"; {busy:.0f} s in trials" if busy is not None else "")
    return (f"| {phase['workers']} | {','.join(phase['gpus'])}{seen} | {label} "
            f"| {rate(w):.1f} ({finished(w)}{detail}) | {_num(w['best_latency_s'])} "
            f"| {phase['duplicates']} | {phase['lost']} | {len(phase['check']['running'])} "
            f"| {kill_text(phase)} | {startup} | {rss} "
            f"| {_num(mem.get('host_used_before_bytes', 0) / GiB, '{:.1f}')} -> "
            f"{_num(mem['host_used_peak_bytes'] / GiB, '{:.1f}')}{n_phase} | {card(summary)} |")


def speedups(docs: Sequence[dict[str, Any]]) -> list[str]:
    """Per storage, over every document given: the 1-worker studies (mean rate) against the
    studies with the most workers."""
    by_storage: dict[str, list[dict[str, Any]]] = {}
    for s in docs:
        by_storage.setdefault(s["storage"], []).extend(
            p for p in s["phases"] if p["window"].get("t0") is not None)
    lines = []
    for kind, phases in by_storage.items():
        n = max((p["workers"] for p in phases), default=1)
        ones = [p["window"] for p in phases if p["workers"] == 1]
        manys = [p["window"] for p in phases if p["workers"] == n]
        if n == 1 or not ones or not manys:
            continue
        one = sum(rate(w) for w in ones) / len(ones)
        many = sum(rate(w) for w in manys) / len(manys)
        ratio = f"{many / one:.2f}x" if one else "–"
        best = " / ".join(_num(w["best_latency_s"]) for w in ones)
        docs_of = {id(p): s for s in docs for p in s["phases"]}
        feas = [[feasible_in_window(docs_of[id(p)], p) for p in phases if p["workers"] == k]
                for k in (1, n)]
        measured = ("" if any(f is None for fs in feas for f in fs) else
                    "; feasible plans measured in the window: "
                    + " -> ".join(" / ".join(str(f) for f in fs) for fs in feas))
        lines.append(f"- {kind}: {one:.1f} -> {many:.1f} trials/min with 1 -> {n} workers "
                     f"({ratio}; 1 worker: {'one study' if len(ones) == 1 else f'mean of {len(ones)} studies'}); best latency after "
                     f"{ones[0]['window_s']:g} s: {best} -> "
                     f"{' / '.join(_num(w['best_latency_s']) for w in manys)} s{measured}")
    return lines


def startups(docs: Sequence[dict[str, Any]]) -> list[str]:
    """Each worker's start-up steps: seconds after launch at which each log line appeared."""
    lines = []
    for s in docs:
        for p in s["phases"]:
            for i, marks in enumerate(p.get("startup_marks_s") or []):
                steps = ", ".join(f"{k} {v:g}" for k, v in marks.items())
                first = p["startup_s"][i]
                lines.append(f"- {p.get('study', s['storage'])} worker {i}: {steps}; first "
                             f"trial {_num(first, '{:.0f}')} s")
    return lines


def setup(docs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for s in docs:
        m = s["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in sorted(m.get("versions", {}).items()))
        gpu = s.get("gpu", {})
        lines.append(f"- {s['storage']}: {m.get('date')}; {m.get('cores')} cores ({m.get('cpu')}); "
                     f"{card(s)} x{len(gpu.get('gpus') or [])}, driver {gpu.get('driver')}; "
                     f"{versions}" + (f"; {s['postgres']}" if s.get("postgres") else ""))
        for p in s["phases"]:
            for c in p["commands"]:
                lines.append(f"  - `{c}`")
    return lines


def table(docs: Sequence[dict[str, Any]]) -> str:
    window = docs[0]["phases"][0]["window"]["window_s"] if docs[0]["phases"] else 0
    own = all("trials_per_min_own" in p["window"] for s in docs for p in s["phases"])
    out = [HEADER.format(w=f"{window:g}").replace(" of each worker", "" if not own else
                                                  " of each worker"), RULE]
    out += [row(s, p) for s in docs for p in s["phases"]]
    starts = startups(docs)
    steps = [STEPS, *starts, ""] if starts else []
    return "\n".join([*out, "", *speedups(docs), "", *steps, "Setup:", *setup(docs)]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    text = table(summaries(args.paths))
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
