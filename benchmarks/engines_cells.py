"""The cells of `benchmarks/engines.py` and what runs in them: the requests and budgets, the
diffusers pipelines with random weights from the shipped configs, the no-offload row and the
resbench plan row (`apply_plan`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.engines_bounds import H2D_PINNED_BYTES_PER_S  # noqa: E402
from benchmarks.engines_measure import GB  # noqa: E402
from resbench.peers import LinkRates, PeerMode, RequestBytes  # noqa: E402

PLANS = Path(__file__).parent / "results" / "engines_plans"
PRESETS = ("sglang-wan2.2", "kijai-block-swap", "diffusers-group-offload",
           "diffusers-model-offload", "diffusers-sequential-offload", "all-resident")
H200 = LinkRates(h2d_pinned_bytes_per_s=H2D_PINNED_BYTES_PER_S, h2d_pageable_bytes_per_s=5.3e9,
                 d2h_pinned_bytes_per_s=55.0e9, d2h_pageable_bytes_per_s=13.9e9,
                 pin_s_per_byte=4.2e-10)
"""benchmarks/results/h200-calibrated.toml: for predictions only."""
PINNED_PEER_HOST = 2.2
"""Host bytes a pinning peer mode needs, in weights: the pageable weights, and pinned copies
the caching host allocator rounds up (run 1: FLUX 34 GB of weights, 73.6 GB RSS peak)."""


# ---------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Cell:
    key: str
    model: str
    call: dict[str, Any]
    budgets_bytes: tuple[int, ...]
    plans: dict[int, str]
    """budget → tuned plan file under the plans folder (`--plans`, default PLANS)."""
    order: tuple[tuple[Any, str], ...]
    """(budget, row) in priority order: budget in bytes, "card" or "host"; row a peer mode,
    "tuned" or "preset:NAME"."""
    deadline_s: float
    """No row of the cell starts if it would end after this (seconds from the start)."""
    host_budget_bytes: int | None = None
    host_plan: str | None = None
    dit_forwards: int = 1
    profile_rows: tuple[str, ...] = ()
    min_left_s: float = 30.0
    """Not started with less time left than this (building the weights takes most of it)."""
    regime: str = "transfer"
    """`transfer` (copies matter: tuned ÷ best fitting peer ≤ 0.80) or `compute` (compute-
    bound: never slower than a peer, 48 GB within 3 % of no offload on the whole card)."""
    compute_guess_s: float = 2.0
    """A call's time with every weight resident, until the cell's no-offload row says
    (the calibrated simulator's all-resident figure, rounded up)."""
    note: str = ""


def cells(tiny: bool) -> list[Cell]:
    """Every cell, rows in order of value: the tuned plans and the peers most likely to be
    the best that fit first, slow or hopeless modes last (a row predicted past the time left
    is skipped with its reason)."""
    flux_call = {"prompt": "a red fox in the snow", "height": 1024, "width": 1024,
                 "num_inference_steps": 8, "guidance_scale": 3.5}
    wan_call = {"prompt": "a red fox in the snow", "negative_prompt": "", "height": 480,
                "width": 832, "num_frames": 17, "num_inference_steps": 4, "guidance_scale": 5.0}
    wan_long = {**wan_call, "num_frames": 81}
    if tiny:
        flux_call.update(height=64, width=64, num_inference_steps=2)
        wan_call.update(height=32, width=32, num_frames=5, num_inference_steps=2)
        wan_long.update(height=32, width=32, num_frames=9, num_inference_steps=2)
    lo, hi = 16 * GB, 24 * GB
    flux_order = (
        ("card", "no-offload"), (lo, "no-offload"), (hi, "no-offload"), (lo, "model-offload"),
        (hi, "tuned"), (lo, "tuned"), ("host", "tuned"), (lo, "group-block-stream"),
        (lo, "group-leaf-stream"), (lo, "preset:kijai-block-swap"), (hi, "model-offload"),
        (lo, "accelerate-dispatch"), (lo, "preset:sglang-wan2.2"), (lo, "group-block"),
        (lo, "preset:diffusers-group-offload"), (lo, "group-leaf"), (lo, "sequential-offload"),
        (lo, "group-block-stream-lowmem"), (lo, "group-leaf-stream-lowmem"),
        (lo, "preset:diffusers-model-offload"), (lo, "preset:diffusers-sequential-offload"),
        (lo, "preset:all-resident"))
    w_lo, w_hi = 24 * GB, 48 * GB

    def wan_order(long: bool) -> tuple[tuple[Any, str], ...]:
        first = (("card", "no-offload"), (w_lo, "no-offload"), (w_hi, "no-offload"),
                 (w_lo, "model-offload"))
        tuned = ((w_hi, "tuned"), (w_lo, "tuned")) if long else ((w_lo, "tuned"), (w_hi, "tuned"))
        return (*first, *tuned, (w_hi, "model-offload"), (w_lo, "group-block-stream"),
                (w_lo, "group-leaf-stream"), (w_lo, "accelerate-dispatch"),
                (w_lo, "preset:sglang-wan2.2"), (w_lo, "preset:kijai-block-swap"),
                (w_hi, "accelerate-dispatch"), (w_lo, "group-block"),
                (w_lo, "preset:diffusers-group-offload"), (w_lo, "group-leaf"),
                (w_lo, "group-block-stream-lowmem"), (w_lo, "sequential-offload"))

    wan_note = "4 steps, CFG: two forwards a step, the expert switch at boundary 0.875"
    return [
        Cell("flux-1024-s8", "flux.1-dev", flux_call, (lo, hi),
             {lo: "flux-1024-s8-16GB.toml", hi: "flux-1024-s8-24GB.toml"}, flux_order,
             deadline_s=1e9, host_budget_bytes=24 * GB,
             host_plan="flux-1024-s8-16GB-host24GB.toml",
             dit_forwards=flux_call["num_inference_steps"],
             profile_rows=("resbench-tuned", "group-block-stream"), compute_guess_s=1.6,
             note="8 steps, not 28 (time limit); guidance-distilled, one forward a step"),
        Cell("wan-480x832x17-s4", "wan2.2-t2v-a14b", wan_call, (w_lo, w_hi),
             {w_lo: "wan-480x832x17-s4-24GB.toml", w_hi: "wan-480x832x17-s4-48GB.toml"},
             wan_order(False), deadline_s=1e9, dit_forwards=2 * wan_call["num_inference_steps"],
             min_left_s=30.0 if tiny else 120.0, compute_guess_s=5.0,
             note=f"transfer matters; {wan_note}"),
        Cell("wan-480x832x81-s4", "wan2.2-t2v-a14b", wan_long, (w_lo, w_hi),
             {w_lo: "wan-480x832x81-s4-24GB.toml", w_hi: "wan-480x832x81-s4-48GB.toml"},
             wan_order(True), deadline_s=1e9, dit_forwards=2 * wan_long["num_inference_steps"],
             min_left_s=30.0 if tiny else 120.0, compute_guess_s=28.0, regime="compute",
             note=f"compute-bound; {wan_note}"),
    ]


# ---------------------------------------------------------------------------------------------
# Pipelines


def word_tokenizer(model_max_length: int) -> Any:
    """A word-level tokenizer (ids below every encoder's vocabulary); pads as the real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "in", "the", "snow"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length)


def build(model: str, tiny: bool, device: torch.device) -> Any:
    """The pipeline with random weights in pageable CPU memory (drawn on the GPU, moved out
    component by component), tokenizers registered."""
    from resbench.engines.build import assemble, build_component, materialize, pipeline_configs
    from resbench.engines.catalog import get_engine_model

    engine_model = get_engine_model(model)
    if tiny:
        from tests.engines.helpers import FLUX_TINY, WAN_TINY

        overrides = FLUX_TINY if model.startswith("flux") else WAN_TINY
        configs = pipeline_configs(engine_model, overrides=overrides)
    else:
        configs = pipeline_configs(engine_model)
    comps: dict[str, nn.Module] = {}
    for role in engine_model.components:
        module = build_component(engine_model, role.name, configs[role.name],
                                 torch.float32 if tiny else None)
        materialize(module, device, seed=0, name=role.name, draw_on_device=device.type == "cuda")
        if device.type == "cuda":
            module.to("cpu")
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        comps[role.name] = module
        print(f"   built {role.name}: {nbytes(module) / GB:.2f} GB", flush=True)
    pipe = assemble(engine_model, comps, configs)
    if model.startswith("flux"):
        pipe.register_modules(tokenizer=word_tokenizer(77), tokenizer_2=word_tokenizer(512))
    else:
        pipe.register_modules(tokenizer=word_tokenizer(512))
    return pipe


def nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def dit_names(pipe: Any) -> list[str]:
    from resbench.engines.apply import engine_model_of

    return [r.name for r in engine_model_of(pipe).components if r.kind == "dit"]


def request_bytes(pipe: Any, cell: Cell) -> RequestBytes:
    comps = {n: m for n, m in pipe.components.items() if isinstance(m, nn.Module)}
    dits = dit_names(pipe)
    dit = max(nbytes(comps[d]) for d in dits)
    return RequestBytes(dit_bytes=dit, dit_forwards=cell.dit_forwards,
                        other_bytes=sum(nbytes(m) for n, m in comps.items() if n not in dits))


# ---------------------------------------------------------------------------------------------
# Rows: what runs


class NoOffload(PeerMode):
    name = "no-offload"
    library = "diffusers"
    description = "pipe.to(device): every weight resident"

    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        pipe.to(device)

    def predict_transfer_s(self, load: RequestBytes, link: LinkRates) -> float:
        return 0.0


@dataclass
class PlanRow:
    """A resbench plan applied with `apply_plan`."""

    plan: Any
    name: str
    handle: Any = None

    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        from resbench.engines.apply import apply_plan

        self.handle = apply_plan(pipe, self.plan, device=device, budget_bytes=budget_bytes)

    def remove(self, pipe: Any) -> None:
        if self.handle is not None:
            # the weights stay in the plan's host buffers (unlocked): no copy into fresh pages
            self.handle.remove(keep_host_buffers=True)
            self.handle = None

    def _device(self) -> Any:
        session = getattr(self.handle, "session", None)
        return getattr(getattr(session, "placement", None), "device", None)

    def pinned_bytes(self) -> int:
        device = self._device()
        return int(device.pinned_bytes()) if hasattr(device, "pinned_bytes") else 0

    def host_bytes(self) -> int | None:
        """Bytes of the host copies the plan keeps (pinned or pageable), None on the CPU."""
        host = getattr(self._device(), "host", None)
        return int(host.host_bytes()) if hasattr(host, "host_bytes") else None


def simulated_latency_s(path: Path) -> float | None:
    """The simulated latency `resbench tune` wrote in the plan's header, if any."""
    import re

    found = re.search(r"^# Latency ([0-9.]+) s \(simulated\)", path.read_text(), re.M)
    return float(found.group(1)) if found else None
