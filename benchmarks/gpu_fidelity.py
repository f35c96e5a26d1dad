"""GPU campaign 2: real runs for simulator fidelity and for the tuned plans.

One process (weights pinned once; each run sets its own memory budget and starts from an
emptied allocator), runs in priority order under a deadline:

* tuned plans (strategies/wan2.2-t2v-a14b/*.tuned.toml) against the presets that fit, at
  48 GB, 24 GB and the full card: Wan2.2 A14B 480x832x81, 4 steps, CFG on;
* more (plan, request) pairs for fidelity: 480x832x17 (2 steps; transfer-bound: a block
  computes in less time than it takes to copy) and 720x1280x17 (3 steps), presets at 48 and
  24 GB;
* a torch.profiler kernel table of one 480x832x81 denoising step (where compute time goes,
  for the cost model).

The simulated side is computed afterwards, off the GPU, by gpu_fidelity_report.py.

    PYTHONPATH=. python benchmarks/gpu_fidelity.py --out $OUT              # GPU machine
    PYTHONPATH=. python benchmarks/gpu_fidelity.py --out /tmp/x --dry-run  # CPU, tiny scale
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.gpu_common import (  # noqa: E402
    Rows,
    attempt,
    environment,
    load_schedule,
    pinned_h2d_probe,
    request_label,
    result_fields,
    run_phase,
)
from resbench.models import get_model  # noqa: E402
from resbench.pipeline import Request  # noqa: E402
from resbench.units import parse_bytes  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
MODEL = "wan2.2"
TUNED = Path("strategies/wan2.2-t2v-a14b")
PRESETS = Path("strategies/presets")


@dataclass(frozen=True, slots=True)
class Config:
    device: str
    scale: float
    main: tuple[int, int, int, int]  # height, width, frames, steps
    short: tuple[int, int, int, int]
    wide: tuple[int, int, int, int]
    budgets: dict[str, str]  # label -> size (the tuned plans' budgets)
    full: str | None  # full-card budget label (None: whole device)


FULL = Config("cuda", 1.0, (480, 832, 81, 4), (480, 832, 17, 2), (720, 1280, 17, 3),
              {"48GB": "48GB", "24GB": "24GB"}, None)
DRY = Config("cpu", 0.05, (32, 32, 5, 4), (32, 32, 5, 2), (48, 64, 5, 3),
             {"48GB": "60MB", "24GB": "20MB"}, None)


def req(spec: Any, shape: tuple[int, int, int, int]) -> Request:
    h, w, f, s = shape
    return Request.for_model(spec, height=h, width=w, frames=f, steps=s, cfg=True)


def plan_path(name: str) -> str:
    if name.startswith("tuned-"):
        return str(TUNED / f"h100-80g-calibrated-{name.removeprefix('tuned-')}.tuned.toml")
    return str(PRESETS / f"{name}.toml")


def work_list(cfg: Config) -> list[tuple[str, str, str, float]]:
    """(request key, plan, budget label, expected seconds) in priority order; budget 'full' is
    the whole card. Expected seconds: the calibrated simulator's latency x 1.3 (campaign 1
    measured compute ~25% above the model) plus setup; used only to respect the deadline."""
    main = [("tuned-48GB", "48GB", 40), ("kijai-block-swap", "48GB", 40),
            ("sglang-wan2.2", "48GB", 40), ("diffusers-group-offload", "48GB", 40),
            ("diffusers-model-offload", "48GB", 60), ("tuned-fullcard", "full", 40),
            ("tuned-24GB", "24GB", 40), ("sglang-wan2.2", "24GB", 40)]
    short = [("all-resident", "48GB", 5), ("sglang-wan2.2", "48GB", 6), ("kijai-block-swap", "48GB", 6),
             ("diffusers-group-offload", "48GB", 6), ("diffusers-model-offload", "48GB", 16),
             ("sglang-wan2.2", "24GB", 6), ("kijai-block-swap", "24GB", 6),
             ("diffusers-group-offload", "24GB", 6), ("diffusers-model-offload", "24GB", 5),
             ("tuned-fullcard", "full", 6)]
    wide = [("sglang-wan2.2", "48GB", 16), ("kijai-block-swap", "48GB", 5),
            ("diffusers-model-offload", "48GB", 34)]
    tail = [("short", "diffusers-sequential-offload", "48GB", 27),
            ("main", "diffusers-group-offload", "24GB", 40),
            ("wide", "diffusers-sequential-offload", "24GB", 46),
            ("main", "diffusers-sequential-offload", "48GB", 80)]
    return ([("main", *m) for m in main] + [("short", *m) for m in short]
            + [("wide", *m) for m in wide] + tail)


def compute_by_unit(frame: Any) -> dict[str, list[float]]:
    """Real compute spans summed per (component, block or rest): {key: [calls, seconds]}."""
    c = frame[frame.kind == "compute"]
    kind = c.unit.where(c.unit == "rest", "blocks")
    g = (c.end_s - c.t_s).groupby([c.component, kind]).agg(["count", "sum"])
    return {f"{a}.{b}": [int(n), float(t)] for (a, b), (n, t) in g.iterrows()}


def kernel_table(prof: Any, top: int = 60) -> list[dict[str, Any]]:
    """GPU kernels of a torch.profiler run: name, calls, total device seconds (largest first)."""
    out = []
    for e in prof.key_averages():
        total = getattr(e, "self_device_time_total", None)
        if total is None:
            total = getattr(e, "self_cuda_time_total", 0)
        kind = str(getattr(e, "device_type", ""))
        if total and "CUDA" in kind:
            out.append({"name": e.key[:200], "calls": e.count, "device_s": total / 1e6})
    out.sort(key=lambda r: -r["device_s"])
    return out[:top]


def phase_all(args: argparse.Namespace, cfg: Config, rows: Rows) -> None:
    from resbench.measure import measure_real, prepare_weights

    spec = get_model(MODEL)
    requests = {"main": req(spec, cfg.main), "short": req(spec, cfg.short), "wide": req(spec, cfg.wide)}
    weights = None
    common: dict[str, Any] = {"scale": cfg.scale, "device": cfg.device}
    if cfg.device == "cuda":
        t0 = time.perf_counter()
        weights = prepare_weights(spec, scale=cfg.scale)
        common["weights"] = weights
        rows.add({"phase": "weights", "status": "ok", "wall_s": time.perf_counter() - t0,
                  "pinned_bytes": weights.host.pinned_bytes(), **environment()})
    schedules = {k: load_schedule(spec, r, scale=cfg.scale, device=cfg.device)
                 for k, r in requests.items()}
    probe: dict[str, Any] = {}
    if cfg.device == "cuda":
        probe = pinned_h2d_probe(schedules["main"].unit("transformer", "blocks.0").weight_bytes)
        rows.add({"phase": "probe", "status": "ok", **probe})
    # One untimed run per request shape (kernel loading); the main one under the profiler.
    for key, r in requests.items():
        one = replace(r, steps=1, cfg=False)
        sched = load_schedule(spec, one, scale=cfg.scale, device=cfg.device)
        prof = key == "main" and cfg.device == "cuda"
        res = attempt(rows, {"phase": "warm-up", "request": request_label(one)},
                      lambda one=one, sched=sched, prof=prof: measure_real(
                          spec, one, "sglang-wan2.2", budget_bytes=None, warmup=False,
                          schedule=sched, torch_profiler=prof, **common))
        if res is not None and prof:
            rows.add({"phase": "kernels", "status": "ok", "request": request_label(one),
                      "plan": "sglang-wan2.2", "stage_latency_s": res.get("stage_latency_s"),
                      "kernels": kernel_table(res["torch_profiler"])})
    for key, plan, budget, expect_s in work_list(cfg):
        r = requests[key]
        budget_bytes = None if budget == "full" else parse_bytes(cfg.budgets[budget])
        base = {"phase": "run", "request_key": key, "request": request_label(r),
                "request_dict": asdict(r), "plan": plan, "plan_path": plan_path(plan),
                "budget": budget, "budget_bytes": budget_bytes}
        if time.time() + (expect_s + 10) * (cfg.device == "cuda") > args.deadline:
            rows.add({**base, "status": "skipped", "message": "deadline"})
            continue
        t0 = time.perf_counter()
        save = (key, plan, budget) == ("main", "tuned-48GB", "48GB")
        res = attempt(rows, base, lambda r=r, plan=plan, b=budget_bytes, key=key: measure_real(
            spec, r, plan_path(plan), budget_bytes=b, warmup=False, schedule=schedules[key],
            **common))
        if res is None:
            continue
        row = {**base, "status": "ok", "wall_s": time.perf_counter() - t0, **result_fields(res),
               "compute_by_unit": compute_by_unit(res["trace"])}
        if probe and res.get("h2d_stream_bytes"):
            row["stream_pct_of_pinned"] = 100 * res["h2d_stream_bytes_per_s"] / probe["h2d_pinned_bytes_per_s"]
        rows.add(row)
        if save:
            stem = Path(args.out) / f"trace_{plan}_{budget}"
            try:
                res["trace"].to_parquet(f"{stem}.parquet", index=False)
            except ImportError:
                res["trace"].to_csv(f"{stem}.csv", index=False)
    if weights is not None:
        weights.host.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry-run", action="store_true", help="tiny scale on the CPU device")
    ap.add_argument("--deadline-s", type=float, default=520.0)
    ap.add_argument("--work", default="/tmp/gpu_fidelity")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = DRY if args.dry_run else FULL
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows_path = Path(args.out) / "gpu_fidelity_real.json"
    if args.phase:
        phase_all(args, cfg, Rows(rows_path))
        return
    deadline = time.time() + args.deadline_s
    env = environment()
    run_phase(SCRIPT, ["--phase", "all", "--out", args.out, "--work", args.work, "--deadline",
                       str(deadline), *(["--dry-run"] if args.dry_run else [])],
              timeout_s=args.deadline_s + 40)
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    rows_path.write_text(json.dumps({"environment": env, "command": " ".join(sys.argv),
                                     "rows": rows}, indent=1))
    done = [r for r in rows if r.get("phase") == "run"]
    print(f"{sum(r['status'] == 'ok' for r in done)} runs ok, "
          f"{sum(r['status'] in ('oom', 'does_not_fit') for r in done)} did not fit, "
          f"{sum(r['status'] == 'skipped' for r in done)} skipped, "
          f"{sum(r['status'] == 'error' for r in done)} errors")
    for r in done:
        print(f"{r['request']:>30} {r['budget']:>5} {r['plan']:>30} {r['status']:>12} "
              f"{r.get('latency_s') or float('nan'):8.2f} s  peak {(r.get('peak_device_bytes') or 0) / 1e9:6.2f} GB")


if __name__ == "__main__":
    main()
