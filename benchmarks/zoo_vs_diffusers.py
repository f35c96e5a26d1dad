"""The zoo's DiTs against diffusers' modules, side by side in one process (issue 12, item 2).

For every zoo model diffusers implements (Wan2.2 T2V-A14B, one expert; Wan2.2 TI2V-5B;
FLUX.1-dev's transformer), three implementations of one forward with random bf16 weights
drawn on the device:

* ``zoo``: the zoo model as deployed (diffusers' numerics; `resbench.models.wan_dit` doc);
* ``zoo-orig``: the original repositories' numerics (the ``-orig`` models; sharing the
  ``zoo`` build's weights), FLUX has none;
* ``diffusers``: the diffusers module built from the config resbench ships
  (`resbench.engines.build`), cast as `from_pretrained(torch_dtype=bfloat16)` leaves it.

Per (model, shape, implementation): one warm-up forward, then the median of ``--repeats``
forwards timed with CUDA events, and the activation peak = max_memory_allocated during the
timed forwards minus memory_allocated before them. Each model is freed before the next.

Writes under OUTDIR: ``zoo_vs_diffusers.csv`` (one row per measurement, written as it comes),
``zoo_vs_diffusers.md`` (table with zoo/diffusers ratios, command, card, driver, versions,
date) and ``profile.txt`` (top CUDA kernels of one forward per implementation, FLUX and
Wan A14B at 7,800 tokens). ``--tiny`` runs the same code on CPU with tiny configs.

    python benchmarks/zoo_vs_diffusers.py OUTDIR [--tiny] [--repeats N]
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resbench.devices.host import fill_random
from resbench.engines.build import build_component as build_engine_component
from resbench.engines.build import materialize as materialize_engine
from resbench.engines.build import pipeline_configs
from resbench.engines.catalog import get_engine_model
from resbench.models import get_model
from resbench.models.base import build_component as build_zoo_component

GOAL_TIME, GOAL_PEAK = 1.05, 1.10
TINY_SCALE = 0.05
FIELDS = ["model", "shape", "tokens", "impl", "time_s", "times_s", "peak_activation_bytes",
          "weight_bytes"]


@dataclass(frozen=True, slots=True)
class Shape:
    label: str
    latent: tuple[int, ...]  # [B, C, (T,) H, W] as the pipeline hands it to the DiT
    text_tokens: int
    profile: bool = False


@dataclass(frozen=True, slots=True)
class Case:
    """One zoo model with its diffusers twin and the shapes to run."""

    zoo: str
    orig: str | None
    engine: str
    family: str  # "wan" or "flux"
    shapes: tuple[Shape, ...]


def cases(tiny: bool) -> list[Case]:
    if tiny:
        return [
            Case("flux.1-dev", None, "flux.1-dev", "flux",
                 (Shape("tiny 64x64", (1, 16, 8, 8), 16, profile=True),)),
            Case("wan2.2-t2v-a14b", "wan2.2-t2v-a14b-orig", "wan2.2-t2v-a14b", "wan",
                 (Shape("tiny 32x32x17", (1, 16, 5, 4, 4), 16, profile=True),
                  Shape("tiny 32x32x9", (1, 16, 3, 4, 4), 16))),
            Case("wan2.2-ti2v-5b", "wan2.2-ti2v-5b-orig", "wan2.2-ti2v-5b", "wan",
                 (Shape("tiny 64x64x9", (1, 48, 3, 4, 4), 16),)),
        ]
    return [
        Case("flux.1-dev", None, "flux.1-dev", "flux",
             (Shape("1024x1024", (1, 16, 128, 128), 512, profile=True),)),
        Case("wan2.2-t2v-a14b", "wan2.2-t2v-a14b-orig", "wan2.2-t2v-a14b", "wan",
             (Shape("480x832x17", (1, 16, 5, 60, 104), 512, profile=True),
              Shape("480x832x81", (1, 16, 21, 60, 104), 512))),
        Case("wan2.2-ti2v-5b", "wan2.2-ti2v-5b-orig", "wan2.2-ti2v-5b", "wan",
             (Shape("704x1280x121", (1, 48, 31, 44, 80), 512),)),
    ]


def tokens_of(shape: Shape) -> int:
    """Image/video tokens after the DiT's 2×2 spatial patching (text tokens not counted)."""
    *_, h, w = shape.latent
    frames = shape.latent[2] if len(shape.latent) == 5 else 1
    return frames * (h // 2) * (w // 2)


# ---------------------------------------------------------------------------------------------
# Building


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def build_zoo(name: str, scale: float, device: torch.device) -> nn.Module:
    module = build_zoo_component(get_model(name).component("transformer"), scale)
    return fill_random(module.to_empty(device=device), seed=0)


def build_orig_sharing(name: str, scale: float, deployed: nn.Module) -> nn.Module:
    """The `-orig` twin built on meta, its parameters the deployed build's tensors."""
    module = build_zoo_component(get_model(name).component("transformer"), scale)
    module.load_state_dict(deployed.state_dict(), assign=True)
    return module


def build_diffusers(name: str, scale: float, device: torch.device) -> nn.Module:
    model = get_engine_model(name)
    config = pipeline_configs(model, scale=scale)["transformer"]
    module = build_engine_component(model, "transformer", config, torch.bfloat16)
    return materialize_engine(module, device, seed=0, name="transformer", draw_on_device=True)


# ---------------------------------------------------------------------------------------------
# Inputs: one call per implementation, closed over its inputs


def randn(shape: tuple[int, ...], device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16)


def wan_calls(shape: Shape, zoo_text_dim: int, device: torch.device
              ) -> tuple[Callable[[nn.Module], Any], Callable[[nn.Module], Any]]:
    x = randn(shape.latent, device, 1)
    t = torch.tensor([700.0], device=device)

    def zoo(m: nn.Module) -> Any:
        text = randn((1, shape.text_tokens, zoo_text_dim), device, 2)
        return m(x, t, {"text_encoder": text})

    def diffusers(m: nn.Module) -> Any:
        text = randn((1, shape.text_tokens, m.config.text_dim), device, 2)
        # diffusers' WanPipeline with expand_timesteps (TI2V-5B) gives each token a timestep
        timestep = t.expand(1, tokens_of(shape)) if m.config.in_channels == 48 else t
        return m(hidden_states=x, timestep=timestep, encoder_hidden_states=text,
                 return_dict=False)

    return zoo, diffusers


def flux_calls(shape: Shape, zoo_cfg: Any, device: torch.device
               ) -> tuple[Callable[[nn.Module], Any], Callable[[nn.Module], Any]]:
    b, c, h, w = shape.latent
    x = randn(shape.latent, device, 1)
    guidance = torch.tensor([3.5], device=device)

    def zoo(m: nn.Module) -> Any:
        cond = {"text_encoder_2": randn((1, shape.text_tokens, zoo_cfg.context_in_dim), device, 2),
                "text_encoder": randn((1, zoo_cfg.vec_in_dim), device, 3), "guidance": guidance}
        return m(x, torch.tensor([700.0], device=device), cond)

    def diffusers(m: nn.Module) -> Any:
        # the pipeline packs latents into 2×2 tokens before the transformer
        packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(
            b, (h // 2) * (w // 2), c * 4)
        ids = torch.zeros(h // 2, w // 2, 3, device=device)
        ids[..., 1] += torch.arange(h // 2, device=device)[:, None]
        ids[..., 2] += torch.arange(w // 2, device=device)[None, :]
        return m(hidden_states=packed,
                 encoder_hidden_states=randn((1, shape.text_tokens,
                                              m.config.joint_attention_dim), device, 2),
                 pooled_projections=randn((1, m.config.pooled_projection_dim), device, 3),
                 timestep=torch.tensor([0.7], device=device), guidance=guidance,
                 img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(shape.text_tokens, 3,
                                                                 device=device),
                 return_dict=False)

    return zoo, diffusers


# ---------------------------------------------------------------------------------------------
# Measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(module: nn.Module, call: Callable[[nn.Module], Any], device: torch.device,
            repeats: int) -> tuple[list[float], int | None]:
    """Seconds of `repeats` forwards after one warm-up, and the activation peak in bytes."""
    with torch.inference_mode():
        out = call(module)
        del out
        sync(device)
        times: list[float] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                out = call(module)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                out = call(module)
                times.append(time.perf_counter() - t0)
            del out
        peak = torch.cuda.max_memory_allocated() - before if device.type == "cuda" else None
    return times, peak


def kernel_table(module: nn.Module, call: Callable[[nn.Module], Any], device: torch.device,
                 rows: int = 15) -> str:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
        out = call(module)
        del out
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


# ---------------------------------------------------------------------------------------------
# Campaign


class Rows:
    """Measurements, appended to the CSV as they come (a run cut short keeps its rows)."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []
        with path.open("w", newline="") as f:
            csv.DictWriter(f, FIELDS).writeheader()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(row)
        peak = row["peak_activation_bytes"]
        print(f"  {row['model']:16s} {row['shape']:14s} {row['impl']:9s} "
              f"{row['time_s'] * 1e3:9.1f} ms  peak "
              f"{'' if peak is None else f'{peak / 2**30:.2f} GiB'}", flush=True)


@contextmanager
def built(factory: Callable[[], nn.Module], device: torch.device) -> Iterator[nn.Module]:
    module = factory()
    try:
        yield module
    finally:
        del module
        free(device)


def run_case(case: Case, scale: float, device: torch.device, repeats: int, rows: Rows,
             profiles: list[str]) -> None:
    t0 = time.perf_counter()
    spec_dit = build_zoo_component(get_model(case.zoo).component("transformer"), scale)
    zoo_cfg = spec_dit.cfg
    del spec_dit

    def record(impl: str, module: nn.Module, shape: Shape, call: Callable[[nn.Module], Any]) -> None:
        times, peak = measure(module, call, device, repeats)
        rows.add({"model": case.zoo, "shape": shape.label, "tokens": tokens_of(shape),
                  "impl": impl, "time_s": statistics.median(times),
                  "times_s": " ".join(f"{s:.5f}" for s in times),
                  "peak_activation_bytes": peak, "weight_bytes": weight_bytes(module)})
        if shape.profile:
            try:
                table = kernel_table(module, call, device)
            except Exception as exc:  # the profile is a diagnosis: never lose the timings for it
                table = f"profiler failed: {type(exc).__name__}: {exc}"
            profiles.append(f"== {case.zoo} {shape.label} {impl}\n{table}")

    def calls(shape: Shape) -> tuple[Callable[[nn.Module], Any], Callable[[nn.Module], Any]]:
        if case.family == "wan":
            return wan_calls(shape, zoo_cfg.text_dim, device)
        return flux_calls(shape, zoo_cfg, device)

    with built(lambda: build_diffusers(case.engine, scale, device), device) as diff:
        print(f"[{case.zoo}] diffusers built in {time.perf_counter() - t0:.1f} s", flush=True)
        for shape in case.shapes:
            record("diffusers", diff, shape, calls(shape)[1])
    with built(lambda: build_zoo(case.zoo, scale, device), device) as zoo:
        print(f"[{case.zoo}] zoo built", flush=True)
        for shape in case.shapes:
            record("zoo", zoo, shape, calls(shape)[0])
        if case.orig is not None:
            with built(lambda: build_orig_sharing(case.orig, scale, zoo), device) as orig:
                for shape in case.shapes:
                    record("zoo-orig", orig, shape, calls(shape)[0])
    print(f"[{case.zoo}] done in {time.perf_counter() - t0:.1f} s", flush=True)


def environment(device: torch.device) -> dict[str, str]:
    import diffusers

    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "cuda": str(torch.version.cuda), "diffusers": diffusers.__version__,
            "python": sys.version.split()[0]}
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name()
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = "unknown"
    else:
        info["card"] = "cpu (--tiny dry run)"
    try:
        info["resbench commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["resbench commit"] = "unknown"
    return info


def markdown(rows: list[dict[str, Any]], env: dict[str, str], command: str, wall_s: float) -> str:
    lines = ["# Zoo DiTs vs diffusers modules, one forward, random bf16 weights", "",
             f"Command: `{command}`  ", f"Wall time: {wall_s:.0f} s  "]
    lines += [f"{k}: {v}  " for k, v in env.items()]
    lines += ["", f"Goal (issue 12): zoo forward within {GOAL_TIME - 1:.0%} of diffusers' time, "
              f"activation peak within {GOAL_PEAK - 1:.0%}. Activation peak = "
              "max_memory_allocated during the timed forwards − memory_allocated before. "
              "Time: median of the timed forwards (CUDA events), after one warm-up.", "",
              "| model | shape | tokens | impl | time ms | time / diffusers | "
              "activation peak GiB | peak / diffusers | goal |",
              "|---|---|---:|---|---:|---:|---:|---:|---|"]
    ref = {(r["model"], r["shape"]): r for r in rows if r["impl"] == "diffusers"}
    for r in rows:
        base = ref.get((r["model"], r["shape"]))
        t_ratio = r["time_s"] / base["time_s"] if base else None
        peak, base_peak = r["peak_activation_bytes"], base and base["peak_activation_bytes"]
        p_ratio = peak / base_peak if peak is not None and base_peak else None
        goal = ""
        if r["impl"] == "zoo" and t_ratio is not None:
            ok = t_ratio <= GOAL_TIME and (p_ratio is None or p_ratio <= GOAL_PEAK)
            goal = "met" if ok else "missed"
        lines.append(
            f"| {r['model']} | {r['shape']} | {r['tokens']:,} | {r['impl']} | "
            f"{r['time_s'] * 1e3:.1f} | {'' if t_ratio is None else f'{t_ratio:.3f}'} | "
            f"{'' if peak is None else f'{peak / 2**30:.2f}'} | "
            f"{'' if p_ratio is None else f'{p_ratio:.3f}'} | {goal} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny configs (a dry run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards (median)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --tiny for a CPU dry run", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/zoo_vs_diffusers.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    env = environment(device)
    print(" | ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    rows = Rows(args.outdir / "zoo_vs_diffusers.csv")
    profiles: list[str] = []
    scale = TINY_SCALE if args.tiny else 1.0
    try:
        for case in cases(args.tiny):
            run_case(case, scale, device, args.repeats, rows, profiles)
    finally:
        wall = time.perf_counter() - start
        (args.outdir / "zoo_vs_diffusers.md").write_text(markdown(rows.rows, env, command, wall))
        (args.outdir / "profile.txt").write_text("\n\n".join(profiles) + "\n")
        print(f"wrote {args.outdir} in {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
