"""Cross-engine benchmark: resbench plans against diffusers' and accelerate's own offload modes,
on the same diffusers pipeline (random weights from the shipped configs), same card, same
process, warm, median of 3 timed calls.

    PYTHONPATH=$PWD python3 benchmarks/engines.py OUTDIR --cells CELL[,CELL] \
        [--limit-s S] [--host-limit-gb G]                                   # a GPU
    PYTHONPATH=. python benchmarks/engines.py OUTDIR --tiny --cells ...      # CPU, tiny configs

Cells (`--cells`, run in the order given; every row is written as soon as it exists, so a
run stopped by the time limit keeps what ran):

* `flux-1024-s8`: FLUX.1-dev 1024×1024, 8 steps (not 28: time), budgets 24 GB and 16 GB,
  and with it the host-limited cell: FLUX at 16 GB with 24 GB of pinned host memory (the
  model is 33.7 GB): the tuned plan for that host budget (it pins the units copied most,
  the rest pageable) runs; every other row is the 16 GB row read against the host budget (a
  peer mode does not change with it);
* `wan-480x832x17-s4`: Wan2.2 T2V A14B 480×832×17, 4 steps, CFG (transfer matters), budgets
  the whole card, 48 GB and 24 GB;
* `wan-480x832x81-s4`: the same at 81 frames (compute-bound).

Rows per budget, in order of value (`cells`): no offload (only where the weights fit;
measured once on the whole card, it is also the cell's compute time), the tuned plan
(`benchmarks/results/engines_plans/`, tuned on CPU with the simulator before this run: out
of sample), every peer mode (`resbench.peers.PEERS`), the resbench presets. A peer mode
does not depend on the budget: it runs once at the smallest budget it fits, and the larger
budget's row reuses that measurement (`measured_at`). Budgets are emulated with
`set_per_process_memory_fraction`; an out-of-memory is a no-fit row. A peer whose copies
alone are predicted over `SLOW_RUN_S` a call runs once, unwarmed; a call predicted over
`LONG_CALL_S` is timed 3 times without a warm-up (a plan row keeps its warm-up: it pins);
a row predicted to pass the time left is skipped with its reason. Host memory: a row that
would pass `--host-limit-gb` is a no-fit row (a pinning peer needs ~2.2× the weights).
Plan rows give the weights back in their (unlocked) host buffers: no copy.

Per row: latency (median, and every sample), setup seconds, first (warm-up) call, peak device
allocated and reserved, host RSS high-water mark, pinned host bytes (the caching host
allocator's peak + resbench's exactly registered buffers), fit, and the physical lower bound
of the cell: max(compute, DiT forwards × max(0, DiT bytes − (budget − activation peak)) /
pinned H2D rate). A tuned row also runs one traced call: its resbench trace goes into
profiles.tar.gz (traces/*.csv.gz) and its stalls by stage and component into the row
(`trace_stall_by_s`). Outputs: OUTDIR/cells.csv, OUTDIR/cells.json, OUTDIR/profiles.tar.gz
(those traces, and torch.profiler Chrome traces of a few rows for `resbench.peers.profile`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.engines_bounds import lower_bound  # noqa: E402
from benchmarks.engines_cells import (  # noqa: E402
    H200,
    PINNED_PEER_HOST,
    PLANS,
    PRESETS,
    Cell,
    NoOffload,
    PlanRow,
    build,
    cells,
    nbytes,
    request_bytes,
    simulated_latency_s,
)
from benchmarks.engines_measure import (  # noqa: E402
    GB,
    SLOW_RUN_S,
    Bench,
    TimeLimit,
    environment,
    free_everything,
    host_ram_bytes,
    one_line,
)
from resbench.peers import PEERS, PeerMode  # noqa: E402
from resbench.peers.diffusers_modes import SequentialOffload  # noqa: E402


def memo_schedules() -> None:
    """Record each (pipeline, call shape) schedule once: `apply_plan` records it on a meta
    copy at its first call (seconds of CPU), the same for every plan row of a cell."""
    import resbench.engines.apply as applying

    original = applying.record_call
    cache: dict[tuple[Any, ...], Any] = {}

    def record_call(pipe: Any, cls: type, model: Any, shape: Any) -> Any:
        key = (id(pipe), model.name, shape)
        if key not in cache:
            cache[key] = original(pipe, cls, model, shape)
        return cache[key]

    applying.record_call = record_call  # type: ignore[assignment]


def run_cell(b: Bench, cell: Cell) -> None:
    """Build the cell's pipeline, run its rows in priority order until its deadline, then
    fill in the rows a measurement at another budget answers and the lower bounds."""
    from resbench.residency.plan import load_plan
    from resbench.resources import resolve_plan

    print(f"== {cell.key} ({cell.note}); {b.left_s():.0f} s left", flush=True)
    t0 = time.perf_counter()
    pipe = build(cell.model, b.tiny, b.device)
    b.env.setdefault("build_s", {})[cell.key] = round(time.perf_counter() - t0, 1)
    load = request_bytes(pipe, cell)
    comps = [m for m in pipe.components.values() if isinstance(m, nn.Module)]
    weights = sum(nbytes(m) for m in comps)
    largest = max(nbytes(m) for m in comps)
    scale = 1.0
    if b.tiny:  # tiny weights: budgets as the same fractions of the full model's weights
        scale = weights / {"flux.1-dev": 33.74 * GB, "wan2.2-t2v-a14b": 69.02 * GB}[cell.model]
    link = H200
    common = {"weights_bytes": weights, "dit_bytes": load.dit_bytes,
              "dit_forwards": cell.dit_forwards}
    state = {"compute_s": 0.0}
    guess_s = 2.0 if b.tiny else cell.compute_guess_s
    first = len(b.rows)

    def label(budget: Any) -> Any:
        return budget if budget == "card" else round(budget / GB, 1)

    def real(budget: Any) -> int | None:
        # tiny activations are a larger share of tiny weights: budgets 2.5× their share
        return None if budget == "card" else int(budget * scale * (2.5 if b.tiny else 1.0))

    def call_s(mode: PeerMode) -> float:
        return (state["compute_s"] or guess_s) + mode.predict_transfer_s(load, link)

    def head(budget: Any, name: str, kind: str) -> dict[str, Any]:
        return {"cell": cell.key, "model": cell.model, "budget_gb": label(budget),
                "budget_bytes": real(budget), "row": name, "kind": kind,
                "regime": cell.regime, **common}

    def peer_row(budget: Any, name: str) -> dict[str, Any]:
        if name == "no-offload":
            mode: PeerMode = NoOffload()
        else:
            mode = PEERS[name]
        why = mode.available(b.device)
        if b.tiny and isinstance(mode, SequentialOffload):
            why = why or "accelerate's cpu_offload onto the CPU fails in set_module_tensor_to_device"
        if why:
            return {**head(budget, name, "peer"), "status": "unavailable", "reason": why}
        limit = real(budget)
        if limit is not None and name == "no-offload" and weights > limit:
            return {**head(budget, name, "peer"), "status": "no-fit", "fit": False,
                    "reason": f"weights {weights / GB / scale:.1f} GB > budget (not run)"}
        if limit is not None and name == "model-offload" and largest > limit:
            return {**head(budget, name, "peer"), "status": "no-fit", "fit": False,
                    "reason": f"largest component {largest / GB / scale:.1f} GB > budget (not run)"}
        host_limit = b.host_limit_bytes * scale
        if mode.pins_host and weights * PINNED_PEER_HOST > host_limit:
            return {**head(budget, name, "peer"), "status": "no-fit", "fit": False,
                    "reason": f"host RAM: pinned copies (~1.2× the weights) beside the pageable "
                              f"weights need ~{PINNED_PEER_HOST * weights / GB / scale:.0f} GB, "
                              f"over this run's host limit of {host_limit / GB / scale:.0f} GB "
                              "(not run)"}
        setup = weights * link.pin_s_per_byte if mode.pins_host else (
            weights / link.h2d_pageable_bytes_per_s if name == "no-offload" else 1.0)
        # the pipeline's own tensors kept through the row (no copy back: ~1 GB/s into fresh
        # pages) where the host can hold a mode's copies beside them; pipe.to() copies none
        # (a snapshot only holds the original tensors: it costs host memory where the mode
        # copies them — pinned copies, a .to("cpu") after each use — and is needed where
        # the mode leaves parameters on meta: accelerate's offload keeps them in a map)
        snapshot = name not in COPY_TO_CPU or 2.0 * weights < host_limit
        return b.run_row(pipe, cell, limit, name, "peer", mode, predicted_call_s=(
                         guess_s if name == "no-offload" and not state["compute_s"] else call_s(mode)),
                         predicted_setup_s=setup, deadline_s=cell.deadline_s, snapshot=snapshot,
                         slow=mode.predict_transfer_s(load, link) > SLOW_RUN_S,
                         profile=name in cell.profile_rows and budget != "card",
                         extra={**head(budget, name, "peer"), "mode": mode.description})

    def plan_row(budget: Any, name: str, the_plan: Any, kind: str, path: Path | None = None,
                 **extra: Any) -> dict[str, Any]:
        simulated = simulated_latency_s(path) if path is not None and not b.tiny else None
        return b.run_row(pipe, cell, real(budget), name, kind, PlanRow(the_plan, name),
                         predicted_call_s=(1.2 * simulated + 0.5 if simulated
                                           else call_s(PEERS["group-block-stream"])),
                         predicted_setup_s=weights * link.pin_s_per_byte,
                         deadline_s=cell.deadline_s, slow=False,
                         trace=kind in ("tuned", "variant"), plan=True,
                         profile=name in cell.profile_rows and budget == cell.budgets_bytes[-1],
                         extra={**head(budget, name, kind), **extra})

    done: dict[tuple[Any, str], dict[str, Any]] = {}
    for budget, name in cell.order:
        if name.startswith("plan:"):
            path = b.plans / name[5:]
            row = plan_row(budget, f"resbench-{path.stem}", load_plan(path), "variant", path,
                           plan=path.name)
        elif name == "tuned":
            path = b.plans / (cell.plans[budget] if budget != "host" else str(cell.host_plan))
            if not path.is_file():
                row = {**head(cell.budgets_bytes[0] if budget == "host" else budget,
                              "resbench-tuned", "tuned"), "status": "skipped",
                       "reason": f"no tuned plan {path.name}"}
            elif budget == "host":
                budget = cell.budgets_bytes[0]
                host = int((cell.host_budget_bytes or 0) * scale)
                host_plan = load_plan(path)
                if host_plan.host.pinned_budget_bytes is not None:  # tiny: the scaled budget
                    host_plan = dataclasses.replace(host_plan, host=dataclasses.replace(
                        host_plan.host, pinned_budget_bytes=host))
                row = plan_row(budget, "resbench-tuned-host", host_plan, "tuned", path,
                               plan=path.name, host_budget_bytes=host)
                row["cell"] = f"{cell.key}-host{label(cell.host_budget_bytes)}GB"
                if row.get("fit"):
                    row["fit"] = row.get("pinned_bytes", 0) <= host
                    if not row["fit"]:
                        row.update(status="no-fit", reason=f"pinned {row['pinned_bytes'] / GB:.1f} "
                                   f"GB > host budget {host / GB:.1f} GB")
            else:
                row = plan_row(budget, "resbench-tuned", load_plan(path), "tuned", path,
                               plan=path.name)
        elif name.startswith("preset:"):
            row = plan_row(budget, f"resbench-{name[7:]}", resolve_plan(name[7:]), "preset")
        else:
            row = peer_row(budget, name)
            if name == "no-offload" and budget == "card":
                row["kind"] = "reference"
                if row.get("status") == "ok":
                    state["compute_s"] = row["latency_s"]
        b.add(row)
        done[(budget, row["row"])] = row
    fill_in(b, cell, done, head, real, label)
    bounds(b, first)
    pipe = None  # the closures above hold it too
    b.broken = None  # the next cell builds its own pipeline
    free_everything()


COPY_TO_CPU = ("model-offload", "group-block", "group-leaf")
"""Peer modes that put weights back with `.to("cpu")` (new tensors): a snapshot beside them
holds the weights twice, and without one their removal copies nothing."""
BUDGET_FREE = ("no-offload", "model-offload", "sequential-offload", "group-block-stream",
               "group-leaf-stream", "group-block-stream-lowmem", "group-leaf-stream-lowmem",
               "group-block", "group-leaf")
"""Peer modes that do the same at any budget: one measurement answers every budget it fits."""


def fill_in(b: Bench, cell: Cell, done: dict[tuple[Any, str], dict[str, Any]], head: Any,
            real: Any, label: Any) -> None:
    """Rows of every budget for every mode: copied from a measurement at another budget the
    mode fit (a budget-free peer, a static preset), else the reason it is missing."""
    from resbench.resources import resolve_plan

    names = ["no-offload", "resbench-tuned", *PEERS,
             *(f"resbench-{p}" for p in PRESETS)]
    for budget in cell.budgets_bytes:
        for name in names:
            if (budget, name) in done:
                continue
            static = name.startswith("resbench-") and name != "resbench-tuned" and (
                resolve_plan(name[9:]).policy == "static")
            source = None
            if name in BUDGET_FREE or static:
                fits = [r for (bud, n), r in done.items() if n == name and r.get("status") == "ok"
                        and bud != "card" and bud != "host"]
                fits = [r for r in fits if isinstance(r.get("budget_bytes"), int)
                        and (r.get("peak_reserved_bytes") or r["budget_bytes"]) <= real(budget)]
                source = fits[0] if fits else None
            if source is not None:
                row = {**source, **head(budget, name, source.get("kind", "peer")),
                       "measured_at": source["budget_gb"]}
            else:
                kind = "tuned" if name == "resbench-tuned" else (
                    "preset" if name.startswith("resbench-") else "peer")
                row = {**head(budget, name, kind), "status": "skipped",
                       "reason": "not reached (time) or not measured at a budget it fits"}
            b.add(row)
    if cell.host_budget_bytes:
        host_cell(b, cell, label)


def host_cell(b: Bench, cell: Cell, label: Any) -> None:
    """The host-limited cell: every row of the smallest budget read against the host budget
    (the peers' pinned bytes do not depend on it); the tuned-host row ran already."""
    key = f"{cell.key}-host{label(cell.host_budget_bytes)}GB"
    small = label(cell.budgets_bytes[0])
    host = cell.host_budget_bytes or 0
    if b.tiny:
        rows = [r for r in b.rows if r.get("row") == "resbench-tuned-host" and r["cell"] == key]
        host = rows[0].get("host_budget_bytes", host) if rows else host
    for prev in [r for r in b.rows if r["cell"] == cell.key and r.get("budget_gb") == small]:
        pinned = prev.get("pinned_bytes") or 0
        fits = bool(prev.get("fit")) and pinned <= host
        row = {**prev, "cell": key, "host_budget_bytes": host, "fit": fits if prev.get("status")
               in ("ok", "no-fit") else prev.get("fit"),
               "measured_at": f"{prev.get('measured_at', small)} (host budget applied to its "
                              "pinned bytes)"}
        if prev.get("status") == "ok" and not fits:
            row.update(status="no-fit", reason=f"pinned {pinned / GB:.1f} GB > host budget "
                                               f"{host / GB:.1f} GB")
        b.add(row)


def bounds(b: Bench, first: int) -> None:
    """The physical lower bound of every row of the cell (`engines_bounds.lower_bound`)."""
    ref = [r for r in b.rows[first:] if r.get("kind") == "reference" and r.get("status") == "ok"]
    if not ref:
        return
    for row in b.rows[first:]:
        fields = lower_bound(ref[0], row)
        if fields is not None:
            row.update(fields)
    b.write()


def select_rows(cell: Cell, spec: str, plans: Path) -> Cell:
    """`cell` with its rows replaced by `spec` (`--rows`), run in the order given: comma-
    separated `BUDGET:ROW`, BUDGET one of the cell's budgets in GB, `card` or `host`; ROW a
    peer mode, `no-offload`, `tuned`, `preset:NAME` or `plan:FILE` (a plan file under
    `plans`, run as a variant row `resbench-STEM`). A row may repeat (measured again, e.g.
    after other rows). Raises ValueError naming the bad item and what is accepted."""
    from resbench.resources import resolve_plan

    by_gb = {f"{b / GB:g}": b for b in cell.budgets_bytes}
    order: list[tuple[Any, str]] = []
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        where, sep, name = item.partition(":")
        if not sep or not name:
            raise ValueError(f"row {item!r}: expected BUDGET:ROW, e.g. {next(iter(by_gb))}:tuned")
        if where in ("card", "host"):
            budget: Any = where
        elif where in by_gb:
            budget = by_gb[where]
        else:
            raise ValueError(f"row {item!r}: cell {cell.key} has budgets "
                             f"{', '.join(by_gb)} GB, card and host")
        if where == "host" and (name != "tuned" or not cell.host_plan):
            raise ValueError(f"row {item!r}: the host budget runs only the tuned host plan "
                             "(host:tuned) of a cell that has one")
        if where == "card" and name != "no-offload":
            raise ValueError(f"row {item!r}: the whole card runs only card:no-offload")
        if name.startswith("plan:"):
            if not (plans / name[5:]).is_file():
                raise ValueError(f"row {item!r}: no plan file {name[5:]} in {plans}")
        elif name.startswith("preset:"):
            try:
                resolve_plan(name[7:])
            except Exception as exc:  # noqa: BLE001 - its message names the presets
                raise ValueError(f"row {item!r}: {one_line(exc)}") from None
        elif name not in ("tuned", "no-offload", *PEERS):
            raise ValueError(f"row {item!r}: unknown row {name!r}; rows are tuned, no-offload, "
                             f"preset:NAME, plan:FILE or a peer mode ({', '.join(PEERS)})")
        order.append((budget, name))
    if not order:
        raise ValueError("--rows is empty; give BUDGET:ROW[,BUDGET:ROW...]")
    return dataclasses.replace(cell, order=tuple(order))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny configs")
    ap.add_argument("--limit-s", type=float, default=None,
                    help="stop starting rows after this (default 360 on the GPU, 300 tiny)")
    ap.add_argument("--cells", default="flux-1024-s8,wan-480x832x17-s4",
                    help="comma-separated cell keys, run in this order; known: "
                         + ", ".join(c.key for c in cells(False)))
    ap.add_argument("--plans", type=Path, default=PLANS,
                    help="folder of the tuned plans (default: benchmarks/results/engines_plans)")
    ap.add_argument("--host-limit-gb", type=float, default=None,
                    help="host memory this process may fill (GB; default: the host's "
                         "MemTotal): rows that would pass it are no-fit rows, not run; give "
                         "it where other processes share the host, or MemTotal grows as used")
    ap.add_argument("--rows", default=None,
                    help="rows to run instead of each cell's own order, in this order: "
                         "BUDGET:ROW[,...], BUDGET a cell budget in GB, card or host; ROW a "
                         "peer mode, no-offload, tuned, preset:NAME or plan:FILE (a variant "
                         "plan under --plans); a row may repeat")
    args = ap.parse_args(argv)
    known = {c.key for c in cells(args.tiny)}
    unknown = [k for k in args.cells.split(",") if k not in known]
    if unknown:
        ap.error(f"--cells: unknown cell {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    by_key = {c.key: c for c in cells(args.tiny)}
    if args.rows is not None:
        try:
            by_key = {k: select_rows(c, args.rows, args.plans) for k, c in by_key.items()
                      if k in args.cells.split(",")}
        except ValueError as exc:
            ap.error(f"--rows: {exc}")
    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda", 0)
    args.out.mkdir(parents=True, exist_ok=True)
    b = Bench(args.out, device, args.limit_s or (300.0 if args.tiny else 360.0), args.tiny)
    b.env = environment(device)
    b.env["limit_s"] = b.limit_s
    b.host_limit_bytes = (int(args.host_limit_gb * GB) if args.host_limit_gb
                          else host_ram_bytes())
    b.env["host_limit_bytes"] = b.host_limit_bytes
    b.plans = args.plans
    b.env["plans"] = str(args.plans)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimit

    signal.signal(signal.SIGALRM, on_alarm)
    memo_schedules()
    torch.set_grad_enabled(False)
    for cell in (by_key[k] for k in args.cells.split(",")):
        if b.left_s() < cell.min_left_s:
            print(f"== {cell.key}: skipped, {b.left_s():.0f} s left", flush=True)
            b.rows.append({"cell": cell.key, "row": "*", "status": "skipped", "reason": "time"})
            continue
        b.broken = None
        try:
            run_cell(b, cell)
        except TimeLimit:
            print(f"== {cell.key}: time limit", flush=True)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            b.rows.append({"cell": cell.key, "row": "*", "status": "error", "reason": one_line(exc)})
        free_everything()
    b.env["wall_s"] = round(time.perf_counter() - b.start, 1)
    b.write()
    print(f"done in {b.env['wall_s']} s: {len(b.rows)} rows in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
