"""accelerate's `dispatch_model` with the first N blocks of each DiT resident on the device.

The rest of each DiT is mapped to `"cpu"`: accelerate then streams those modules' weights
leaf by leaf, blocking and from pageable memory, at every forward (its `AlignDevicesHook`
with `offload=True`), and drops them after. The text encoders and the VAE run under
accelerate's `cpu_offload_with_hook` (a whole component moved when it runs) and are sent
back to the CPU when a DiT starts. The resident blocks stay on the device while the text
encoders run, so N is the largest count whose blocks, with the DiT's non-block part, fit the
budget less the largest other component and `reserve_bytes` for activations (split evenly
between the DiTs), as a user sizing `max_memory` would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resbench.engines.units import block_paths
from resbench.peers.base import LinkRates, PeerMode, RequestBytes, WeightSnapshot, modules_of

_HANDLES = "_resbench_peer_handles"


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def device_map(module: nn.Module, resident_blocks: int, device: int | str) -> dict[str, Any]:
    """A complete accelerate device map of `module`: the first `resident_blocks` blocks (in
    block order) and everything outside the blocks on `device`, the other blocks on cpu."""
    paths = block_paths(module)
    out: dict[str, Any] = {}
    budget = [resident_blocks]

    def walk(prefix: str, mod: nn.Module) -> None:
        if prefix in paths:
            for i, _ in enumerate(mod):  # type: ignore[arg-type]
                keep = budget[0] > 0
                budget[0] -= keep
                out[f"{prefix}.{i}"] = device if keep else "cpu"
            return
        if not any(p.startswith(prefix + ".") or not prefix for p in paths):
            out[prefix] = device
            return
        for key in [*mod._parameters, *mod._buffers]:
            out[f"{prefix}.{key}" if prefix else key] = device
        for name, child in mod.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", module)
    return out


def resident_count(module: nn.Module, budget_bytes: int) -> int:
    """How many leading blocks fit `budget_bytes` next to the DiT's non-block part."""
    blocks: list[nn.Module] = []
    for path in block_paths(module):
        blocks.extend(module.get_submodule(path))  # type: ignore[arg-type]
    left = budget_bytes - (_nbytes(module) - sum(_nbytes(b) for b in blocks))
    n = 0
    for block in blocks:
        left -= _nbytes(block)
        if left < 0:
            break
        n += 1
    return n


class DispatchBlocks(PeerMode):
    name = "accelerate-dispatch"
    library = "accelerate"
    description = ("accelerate dispatch_model(device_map): each DiT's first N blocks resident, "
                   "the rest streamed leaf by leaf (pageable, blocking); text encoders and VAE "
                   "under cpu_offload_with_hook")

    def __init__(self, reserve_bytes: int = 4 * 10**9) -> None:
        self.reserve_bytes = reserve_bytes
        self.resident: dict[str, int] = {}

    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        from accelerate import cpu_offload_with_hook, dispatch_model

        from resbench.engines.apply import engine_model_of

        model = engine_model_of(pipe)
        comps = modules_of(pipe)
        dits = [r.name for r in model.components if r.kind == "dit" and comps.get(r.name) is not None]
        index: int | str = device.index if device.index is not None else (
            torch.cuda.current_device() if device.type == "cuda" else "cpu")
        total = budget_bytes if budget_bytes is not None else (
            torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
            else 1 << 62)
        others = max([_nbytes(m) for n, m in comps.items() if n not in dits] or [0])
        share = max(0, total - self.reserve_bytes - others) // max(1, len(dits))
        hooks = []
        for name, module in comps.items():
            if name in dits:
                continue
            _, hook = cpu_offload_with_hook(module, execution_device=device)
            hooks.append(hook)
        self.resident = {}
        for name in dits:
            n = resident_count(comps[name], share)
            self.resident[name] = n
            dispatch_model(comps[name], device_map(comps[name], n, index), main_device=index,
                           force_hooks=True)

            def offload_others(mod: nn.Module, args: Any) -> None:
                for hook in hooks:
                    hook.offload()
            handle = comps[name].register_forward_pre_hook(offload_others)
            setattr(pipe, _HANDLES, [*getattr(pipe, _HANDLES, []), handle])

    def remove(self, pipe: Any, snapshot: WeightSnapshot | None = None) -> None:
        for handle in getattr(pipe, _HANDLES, []):
            handle.remove()
        pipe.__dict__.pop(_HANDLES, None)
        super().remove(pipe, snapshot)

    def predict_transfer_s(self, load: RequestBytes, link: LinkRates) -> float:
        # without the module, assume half of each DiT streams
        streamed = load.dit_bytes * load.dit_forwards / 2
        once = load.other_bytes
        return (streamed + once) / link.h2d_pageable_bytes_per_s + once / link.d2h_pageable_bytes_per_s
