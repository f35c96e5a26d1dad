"""The results table of `distributed_tune_gpu.py` runs, from their OUTDIRs.

    python benchmarks/distributed_tune_gpu_report.py OUTDIR... [--out table.md]

Reads every `summary-<storage>.json` in the OUTDIRs (or summary files named directly) and
prints a Markdown table, one row per phase (workers, GPUs, storage, trials/min and the best
feasible latency within the first window, duplicates, lost, trials left RUNNING, the kill
test, start-up, host memory, card), then the 1 -> N speed-up per storage and the
setup (command, card, versions, date).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

GiB = 2**30
HEADER = ("| workers | GPUs | storage | trials/min (first {w} s) | best latency at {w} s (s) "
          "| duplicates | lost | left RUNNING | kill test (SIGKILL of one worker) "
          "| start-up (s) | host memory per worker, peak RSS (GiB) | host used, before -> peak (GiB) | card |")
RULE = "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- |"


def summaries(paths: Iterable[Path]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("summary-*.json")) if p.is_dir() else [p]
    if not files:
        raise SystemExit("no summary-*.json found; pass the OUTDIRs of distributed_tune_gpu.py")
    return [json.loads(f.read_text()) for f in files]


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
    label = phase["storage"] + (f" (stopped early: {stopped})" if stopped else "")
    shared = phase.get("gpus_shared")
    seen = ("" if shared is None else " (nvidia-smi: SHARED)" if shared else
            " (nvidia-smi: one worker per GPU)" if len(phase["gpus"]) > 1 else "")
    return (f"| {phase['workers']} | {','.join(phase['gpus'])}{seen} | {label} "
            f"| {w['trials_per_min']:.1f} ({w['finished']}) | {_num(w['best_latency_s'])} "
            f"| {phase['duplicates']} | {phase['lost']} | {len(phase['check']['running'])} "
            f"| {kill_text(phase)} | {startup} | {rss} "
            f"| {_num(mem.get('host_used_before_bytes', 0) / GiB, '{:.1f}')} -> "
            f"{_num(mem['host_used_peak_bytes'] / GiB, '{:.1f}')} | {card(summary)} |")


def speedups(docs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for s in docs:
        by_n = {p["workers"]: p["window"] for p in s["phases"]}
        if 1 in by_n and len(by_n) > 1:
            n = max(by_n)
            one, many = by_n[1]["trials_per_min"], by_n[n]["trials_per_min"]
            ratio = f"{many / one:.2f}x" if one else "–"
            lines.append(f"- {s['storage']}: {one:.1f} -> {many:.1f} trials/min with 1 -> {n} "
                         f"workers ({ratio}); best latency after {by_n[1]['window_s']:g} s: "
                         f"{_num(by_n[1]['best_latency_s'])} -> {_num(by_n[n]['best_latency_s'])} s")
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
    out = [HEADER.format(w=f"{window:g}"), RULE]
    out += [row(s, p) for s in docs for p in s["phases"]]
    return "\n".join([*out, "", *speedups(docs), "", "Setup:", *setup(docs)]) + "\n"


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
