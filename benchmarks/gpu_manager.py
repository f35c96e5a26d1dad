"""GPU campaign 1: the residency manager on the real card.

Full-size Wan2.2 T2V-A14B, 480x832, 81 frames, 2 steps, CFG on (sequential):

* (a) every preset in strategies/presets at 48 GB and 24 GB budgets (one subprocess per
  budget: a fresh caching allocator each), each output compared with a full-card reference;
* (b) manager overhead: the all-resident plan against no manager at all (33 frames, where
  every weight and the activations fit the card);
* (c) achieved H2D during layerwise streaming against the pinned bandwidth measured in the
  same process;
* `resbench.calibrate` on the card, saved as a profile TOML, and a probe of PyTorch's
  pinned-memory rounding.

    PYTHONPATH=. python benchmarks/gpu_manager.py --out $OUT           # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_manager.py --out /tmp/x --dry-run  # CPU, tiny scale

Writes gpu_manager.json (every row) and gpu_manager.md (tables) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.gpu_common import (  # noqa: E402
    Rows,
    attempt,
    environment,
    gb,
    load_schedule,
    pinned_h2d_probe,
    request_label,
    result_fields,
    run_phase,
    sec,
)
from resbench.models import get_model  # noqa: E402
from resbench.pipeline import Request  # noqa: E402
from resbench.residency import OffloadConfig, Plan, ResidentConfig  # noqa: E402
from resbench.resources import preset_names, resolve_plan  # noqa: E402
from resbench.units import format_bytes, parse_bytes  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
MODEL = "wan2.2"
# Cheapest first, slowest last: a deadline cuts the slow ones.
ORDER = ["all-resident", "sglang-wan2.2", "diffusers-group-offload", "kijai-block-swap",
         "diffusers-model-offload", "diffusers-sequential-offload"]
TRACE_OF = ("sglang-wan2.2", 48e9)


@dataclass(frozen=True, slots=True)
class Config:
    device: str
    scale: float
    height: int
    width: int
    frames: int
    steps: int
    overhead_frames: tuple[int, ...]  # first that fits all-resident is used
    budgets: tuple[str, ...]
    reps: int
    run_s: float  # a run is started only with this much time left before the deadline


FULL = Config("cuda", 1.0, 480, 832, 81, 2, (33, 17), ("48GB", "24GB"), 3, 45.0)
DRY = Config("cpu", 0.05, 32, 32, 5, 2, (5,), ("60MB", "20MB"), 2, 0.0)


def requests(cfg: Config) -> tuple[Request, Request]:
    spec = get_model(MODEL)
    main = Request.for_model(spec, height=cfg.height, width=cfg.width, frames=cfg.frames,
                             steps=cfg.steps, cfg=True)
    warm = replace(main, steps=1, cfg=False)
    return main, warm


def presets() -> list[str]:
    names = preset_names()
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def full_card_plan() -> Plan:
    return Plan(name="full-card-te-offload",
                description="text encoder offloaded (dropped after use), everything else resident",
                components=(("text_encoder", OffloadConfig()), ("default", ResidentConfig())))


def diff(out: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
    if ref is None or out.shape != ref.shape:
        return {}
    d = (out - ref).abs()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "bitwise_equal": bool(torch.equal(out, ref)),
            "ref_max_abs": float(ref.abs().max())}


# ---------------------------------------------------------------------------------- phases


def phase_calibrate(args: argparse.Namespace, cfg: Config, rows: Rows) -> None:
    from resbench.calibrate import calibrate

    env = environment()
    slug = env["card"].lower().replace("nvidia", "").strip().replace(" ", "-")
    path = Path(args.out) / f"{slug}-calibrated.toml"
    t0 = time.perf_counter()
    profile = calibrate(path)
    rows.add({"phase": "calibrate", "status": "ok", "path": str(path), "wall_s": time.perf_counter() - t0,
              "h2d_pinned_bytes_per_s": profile.h2d_pinned_bytes_per_s,
              "gemm_flops_per_s": profile.gemm_flops_per_s, **env})
    # PyTorch's own pinned allocation of one Wan block's bytes: how much does it lock?
    spec = get_model(MODEL)
    schedule = load_schedule(spec, requests(cfg)[0], scale=cfg.scale, device=cfg.device)
    block = schedule.unit("transformer", "blocks.0").weight_bytes
    def probe() -> dict[str, Any]:
        before = torch.cuda.host_memory_stats()
        t0 = time.perf_counter()
        x = torch.empty(block, dtype=torch.uint8, pin_memory=True)
        alloc_s = time.perf_counter() - t0
        after = torch.cuda.host_memory_stats()
        delta = {k: after[k] - before.get(k, 0) for k in after
                 if "bytes" in k and "current" in k and isinstance(after[k], int)}
        del x
        return {"alloc_s": alloc_s, "host_memory_stats_delta": delta}

    base = {"phase": "pinned_rounding", "requested_bytes": block}
    res = attempt(rows, base, probe)
    if res is not None:
        rows.add({**base, "status": "ok", **res})


def phase_fullcard(args: argparse.Namespace, cfg: Config, rows: Rows) -> None:
    from resbench.measure import measure_real, measure_unmanaged, prepare_weights

    spec = get_model(MODEL)
    main, warm = requests(cfg)
    deadline = args.deadline
    weights = None
    if cfg.device == "cuda":
        t0 = time.perf_counter()
        weights = prepare_weights(spec, scale=cfg.scale)
        rows.add({"phase": "weights", "status": "ok", "wall_s": time.perf_counter() - t0,
                  "pinned_bytes": weights.host.pinned_bytes(), "shared": weights.shared,
                  **environment()})
    sched = load_schedule(spec, main, scale=cfg.scale, device=cfg.device)
    common = {"weights": weights, "scale": cfg.scale, "device": cfg.device}
    if cfg.device == "cuda":
        rows.add({"phase": "fullcard", "plan": "probe", "status": "ok",
                  **pinned_h2d_probe(sched.unit("transformer", "blocks.0").weight_bytes)})
        attempt(rows, {"phase": "fullcard", "plan": "warm-up"}, lambda: measure_real(
            spec, warm, "sglang-wan2.2", budget_bytes=None, warmup=False, trace=False,
            schedule=load_schedule(spec, warm, scale=cfg.scale, device=cfg.device), **common))
    # Reference output: all-resident if it fits the whole card, else a full-card plan that does.
    for plan in (resolve_plan("all-resident"), full_card_plan()):
        base = {"phase": "fullcard", "budget": "full card", "plan": plan.name,
                "request": request_label(main)}
        res = attempt(rows, base, lambda plan=plan: measure_real(
            spec, main, plan, budget_bytes=None, warmup=False, schedule=sched, keep_output=True,
            **common))
        if res is not None:
            torch.save(res["output"], Path(args.work) / "ref.pt")
            rows.add({**base, "status": "ok", "reference": True, **result_fields(res)})
            break
    # Manager overhead: all-resident under the manager vs no manager, alternating.
    for frames in cfg.overhead_frames:
        small = replace(main, frames=frames)
        small_sched = load_schedule(spec, small, scale=cfg.scale, device=cfg.device)
        base = {"phase": "overhead", "budget": "full card", "request": request_label(small)}
        first = attempt(rows, {**base, "plan": "unmanaged"}, lambda small=small: measure_unmanaged(
            spec, small, warmup=True, keep_output=True, **common))
        managed_first = attempt(rows, {**base, "plan": "all-resident"},
                                lambda small=small, s=small_sched: measure_real(
                                    spec, small, "all-resident", budget_bytes=None, warmup=False,
                                    schedule=s, keep_output=True, **common))
        if first is None or managed_first is None:
            continue
        rows.add({**base, "plan": "unmanaged", "status": "ok", "rep": 0, **result_fields(first)})
        rows.add({**base, "plan": "all-resident", "status": "ok", "rep": 0,
                  **result_fields(managed_first), **diff(managed_first["output"], first["output"])})
        for rep in range(1, cfg.reps):
            if time.time() > deadline - 2 * cfg.run_s / 3:
                break
            u = measure_unmanaged(spec, small, warmup=False, **common)
            rows.add({**base, "plan": "unmanaged", "status": "ok", "rep": rep, **result_fields(u)})
            m = measure_real(spec, small, "all-resident", budget_bytes=None, warmup=False,
                             schedule=small_sched, trace=False, **common)
            rows.add({**base, "plan": "all-resident", "status": "ok", "rep": rep,
                      **result_fields(m)})
        break
    if weights is not None:
        weights.host.close()


def phase_budget(args: argparse.Namespace, cfg: Config, rows: Rows) -> None:
    from resbench.measure import measure_real, prepare_weights

    spec = get_model(MODEL)
    main, warm = requests(cfg)
    budget = parse_bytes(args.budget)
    weights = None
    if cfg.device == "cuda":
        t0 = time.perf_counter()
        weights = prepare_weights(spec, scale=cfg.scale)
        rows.add({"phase": "weights", "budget": args.budget, "status": "ok",
                  "wall_s": time.perf_counter() - t0, "pinned_bytes": weights.host.pinned_bytes()})
    sched = load_schedule(spec, main, scale=cfg.scale, device=cfg.device)
    common = {"weights": weights, "scale": cfg.scale, "device": cfg.device}
    probe: dict[str, Any] = {}
    if cfg.device == "cuda":
        probe = pinned_h2d_probe(sched.unit("transformer", "blocks.0").weight_bytes)
        rows.add({"phase": "budget", "budget": args.budget, "plan": "probe", "status": "ok", **probe})
        attempt(rows, {"phase": "budget", "budget": args.budget, "plan": "warm-up"},
                lambda: measure_real(spec, warm, "sglang-wan2.2", budget_bytes=budget, warmup=False,
                                     trace=False, schedule=load_schedule(
                                         spec, warm, scale=cfg.scale, device=cfg.device), **common))
    ref_path = Path(args.work) / "ref.pt"
    ref = torch.load(ref_path) if ref_path.is_file() else None
    wanted = args.presets.split(",") if args.presets else presets()
    for name in wanted:
        base = {"phase": "budget", "budget": args.budget, "budget_bytes": budget, "plan": name,
                "request": request_label(main)}
        if time.time() > args.deadline - cfg.run_s:
            rows.add({**base, "status": "skipped", "message": "deadline"})
            continue
        t0 = time.perf_counter()
        res = attempt(rows, base, lambda name=name: measure_real(
            spec, main, name, budget_bytes=budget, warmup=False, schedule=sched, keep_output=True,
            **common))
        if res is None:
            continue
        row = {**base, "status": "ok", "wall_s": time.perf_counter() - t0, **result_fields(res),
               **diff(res["output"], ref)}
        if probe and res.get("h2d_stream_bytes"):
            row["h2d_pinned_probe_bytes_per_s"] = probe["h2d_pinned_bytes_per_s"]
            row["stream_pct_of_pinned"] = 100 * res["h2d_stream_bytes_per_s"] / probe["h2d_pinned_bytes_per_s"]
        rows.add(row)
        if (name, budget) == (TRACE_OF[0], int(TRACE_OF[1])) or args.dry_run and name == TRACE_OF[0]:
            frame = res["trace"]
            stem = Path(args.out) / f"trace_{name}_{args.budget}"
            try:
                frame.to_parquet(f"{stem}.parquet", index=False)
            except ImportError:
                frame.to_csv(f"{stem}.csv", index=False)
    if weights is not None:
        weights.host.close()


PHASES = {"calibrate": phase_calibrate, "fullcard": phase_fullcard, "budget": phase_budget}


# ---------------------------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], cmd: str) -> str:
    card = env.get("card", "?")
    lines = [
        "# GPU campaign 1: the residency manager on the real card",
        "",
        f"- command: `{cmd}`",
        f"- card: {card} ({env.get('nvidia_smi', '')}); torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}; {env.get('date')}",
        "- model: Wan2.2 T2V-A14B at full size, random bf16 weights (VAE fp32); the two "
        "experts share host copies (identical shapes)",
        "",
    ]
    cal = [r for r in rows if r.get("phase") == "calibrate"]
    if cal:
        c = cal[0]
        lines += [f"Calibration: `{Path(c['path']).name}`, H2D pinned "
                  f"{c['h2d_pinned_bytes_per_s'] / 1e9:.1f} GB/s, GEMM "
                  f"{c['gemm_flops_per_s'] / 1e12:.0f} TFLOP/s ({c['wall_s']:.0f} s).", ""]
    rnd = [r for r in rows if r.get("phase") == "pinned_rounding"]
    if rnd:
        r = rnd[0]
        lines += [f"`torch.empty(pin_memory=True)` of one Wan block ({format_bytes(r['requested_bytes'])}): "
                  f"host allocator stats moved by {json.dumps(r['host_memory_stats_delta'])}.", ""]
    head = ("| budget | plan | status | latency s | GPU s | setup s | denoise s | decode s | "
            "peak alloc GB | peak reserved GB | H2D GB | stream GB/s (% pinned) | max abs diff |")
    lines += ["## Presets and reference", "", head, "|" + " --- |" * 13]
    for r in rows:
        if r.get("phase") not in ("fullcard", "budget") or r.get("plan") in ("probe", "warm-up", None):
            continue
        st = r.get("stage_latency_s") or {}
        stream = ""
        if r.get("h2d_stream_bytes_per_s"):
            stream = f"{r['h2d_stream_bytes_per_s'] / 1e9:.1f}"
            if r.get("stream_pct_of_pinned"):
                stream += f" ({r['stream_pct_of_pinned']:.0f}%)"
        status = r["status"] + (" (ref)" if r.get("reference") else "")
        lines.append(
            f"| {r.get('budget', '')} | {r['plan']} | {status} | {sec(r.get('latency_s'))} | "
            f"{sec(r.get('latency_gpu_s'))} | {sec(r.get('setup_s'))} | {sec(st.get('denoise'))} | "
            f"{sec(st.get('decode'))} | {gb(r.get('peak_device_bytes'))} | "
            f"{gb(r.get('peak_reserved_bytes'))} | {gb(r.get('h2d_bytes'))} | {stream} | "
            f"{'' if r.get('max_abs_diff') is None else format(r['max_abs_diff'], '.3g')} |")
    fails = [r for r in rows if r.get("status") in ("oom", "does_not_fit", "error", "skipped")]
    if fails:
        lines += ["", "Failures:", ""]
        lines += [f"- {r.get('budget', '')} {r.get('plan', r.get('phase'))}: {r['status']}: "
                  f"{r.get('message', '')[:400]}" for r in fails]
    over = [r for r in rows if r.get("phase") == "overhead" and r.get("status") == "ok"]
    if over:
        import statistics

        lat: dict[str, list[float]] = {}
        for r in over:
            lat.setdefault(r["plan"], []).append(r["latency_s"])
        lines += ["", f"## Manager overhead ({over[0]['request']}, full card)", "",
                  "| plan | latency samples s | median s |", "| --- | --- | --- |"]
        for plan, xs in lat.items():
            lines.append(f"| {plan} | {', '.join(f'{x:.3f}' for x in xs)} | {statistics.median(xs):.3f} |")
        if {"unmanaged", "all-resident"} <= lat.keys():
            u, m = statistics.median(lat["unmanaged"]), statistics.median(lat["all-resident"])
            lines.append(f"\nOverhead of the manager: {100 * (m / u - 1):+.2f}% (median vs median).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the results")
    ap.add_argument("--dry-run", action="store_true", help="tiny scale on the CPU device")
    ap.add_argument("--deadline-s", type=float, default=500.0, help="stop starting work after this")
    ap.add_argument("--phases", default="calibrate,fullcard,budget")
    ap.add_argument("--budgets", default=None, help="comma list (default 48GB,24GB)")
    ap.add_argument("--presets", default=None, help="comma list (default: every preset)")
    ap.add_argument("--work", default="/tmp/gpu_manager")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = DRY if args.dry_run else FULL
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.phase:  # a child
        name = args.phase + (f"-{args.budget}" if args.budget else "")
        PHASES[args.phase](args, cfg, Rows(Path(args.work) / f"{name}.json"))
        return
    deadline = time.time() + args.deadline_s
    for old in Path(args.work).glob("*.json"):
        old.unlink()
    budgets = args.budgets.split(",") if args.budgets else list(cfg.budgets)
    plan: list[list[str]] = []
    for phase in args.phases.split(","):
        if phase == "calibrate" and cfg.device == "cpu":
            continue
        if phase == "budget":
            plan += [["--phase", "budget", "--budget", b] for b in budgets]
        else:
            plan.append(["--phase", phase])
    common = ["--out", args.out, "--work", args.work, "--deadline", str(deadline)]
    common += ["--dry-run"] if args.dry_run else []
    common += ["--presets", args.presets] if args.presets else []
    env = environment()
    for phase_args in plan:
        left = deadline - time.time()
        if left < 20:
            print(f"!! no time left for {phase_args}", flush=True)
            continue
        run_phase(SCRIPT, [*phase_args, *common], timeout_s=left + 30)
        collect(args, env)
    collect(args, env)


def collect(args: argparse.Namespace, env: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = []
    for name in ("calibrate", "fullcard"):
        p = Path(args.work) / f"{name}.json"
        if p.is_file():
            rows += json.loads(p.read_text())
    for p in sorted(Path(args.work).glob("budget-*.json"), reverse=True):
        rows += json.loads(p.read_text())
    cards = {r.get("card") for r in rows if r.get("card")}
    if cards:
        env = {**env, "card": ", ".join(sorted(cards))}
    cmd = "PYTHONPATH=. python " + " ".join(["benchmarks/gpu_manager.py", *sys.argv[1:]])
    (Path(args.out) / "gpu_manager.json").write_text(json.dumps({"environment": env, "rows": rows},
                                                                indent=1))
    (Path(args.out) / "gpu_manager.md").write_text(markdown(rows, env, cmd))


if __name__ == "__main__":
    main()
