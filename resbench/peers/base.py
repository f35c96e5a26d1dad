"""The contract of a peer mode: an offload mode another library ships, applied to the same
diffusers pipeline the engine builds, so that it runs next to resbench plans on equal terms.

A mode is a small class in the registry (`resbench.peers.PEERS`). Its life with a pipeline:

1. the pipeline's weights sit in pageable CPU memory (as `from_pretrained` leaves them);
2. `apply(pipe, device, budget_bytes)` installs the library's own hooks (nothing of
   resbench runs during the calls: the library moves the weights);
3. any number of `pipe(...)` calls;
4. `remove(pipe)` takes every hook away and leaves each weight in fresh pageable CPU memory
   again (the values unchanged), so the next mode starts from the same state.

`available()` names what is missing for the mode to run here (a package, a CUDA device), or
returns None. `predict_transfer_s` is a rough cost of the copies one request makes, from the
link's pageable and pinned rates: callers use it to skip modes that would take too long.
"""

from __future__ import annotations

import abc
import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkRates:
    """Copy rates of the host link, bytes per second (a hardware profile's fields)."""

    h2d_pinned_bytes_per_s: float
    h2d_pageable_bytes_per_s: float
    d2h_pinned_bytes_per_s: float
    d2h_pageable_bytes_per_s: float
    pin_s_per_byte: float = 0.0
    """Cost of pinning host memory on the fly (`pinned_alloc_s_per_byte`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestBytes:
    """The weight bytes one request reads, per pass: `dit_bytes` is read once per DiT forward
    (`dit_forwards` of them), `other_bytes` (text encoders, VAE) once per request."""

    dit_bytes: int
    dit_forwards: int
    other_bytes: int


class PeerMode(abc.ABC):
    """One offload mode of another library (see the module doc for the contract)."""

    name: ClassVar[str]
    library: ClassVar[str]
    """The package that implements it: `diffusers` or `accelerate`."""
    description: ClassVar[str]
    pins_host: ClassVar[bool] = False
    """Whether the mode keeps pinned host copies of the weights it streams."""

    def available(self, device: torch.device) -> str | None:
        """Why the mode cannot run on `device` here, or None."""
        # diffusers' group offloading also needs accelerate (its `send_to_device`)
        for package in ("diffusers", "accelerate"):
            if importlib.util.find_spec(package) is None:
                return f"{package} is not installed"
        return None

    @abc.abstractmethod
    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        """Install the mode on `pipe` (weights on the CPU), computing on `device`."""

    def remove(self, pipe: Any, snapshot: WeightSnapshot | None = None) -> None:
        """Take the mode's hooks away; every weight back in pageable CPU memory: rebound to
        `snapshot` (taken before `apply`: no copy), else copied out of wherever it is."""
        remove_hooks(pipe)
        if snapshot is not None:
            snapshot.restore()
        to_pageable_cpu(pipe)

    @abc.abstractmethod
    def predict_transfer_s(self, load: RequestBytes, link: LinkRates) -> float:
        """Seconds of copies one request makes under this mode (not hidden by compute)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {self.description})"


class WeightSnapshot:
    """Every parameter object and buffer of a pipeline with the tensor it held, taken before
    a mode applies; `restore()` puts them back without copying. Inference leaves the values
    unchanged, so this is the pipeline as it was. It keeps the original host tensors alive
    while the mode runs: host memory holds the weights once more where a mode copies them
    (pinned copies, a `.to("cpu")` after each use)."""

    def __init__(self, pipe: Any) -> None:
        self.entries: list[tuple[nn.Module, str, bool, torch.Tensor, torch.Tensor]] = []
        for module in modules_of(pipe).values():
            for sub in module.modules():
                for key, p in sub._parameters.items():
                    if p is not None:
                        self.entries.append((sub, key, True, p, p.data))
                for key, b in sub._buffers.items():
                    if b is not None:
                        self.entries.append((sub, key, False, b, b))

    def restore(self) -> None:
        for module, key, is_param, obj, data in self.entries:
            if is_param:
                obj.data = data
                module._parameters[key] = obj  # type: ignore[assignment]
            else:
                module._buffers[key] = data


def modules_of(pipe: Any) -> dict[str, nn.Module]:
    return {n: m for n, m in pipe.components.items() if isinstance(m, nn.Module)}


_DIFFUSERS_HOOKS = ("group_offloading", "lazy_prefetch_group_offloading",
                    "layer_execution_tracker", "layerwise_casting")


def remove_hooks(pipe: Any) -> None:
    """Remove accelerate's and diffusers' offload hooks from every component and submodule
    (`pipe.remove_all_hooks` misses accelerate hooks that sit only on submodules, as
    `cpu_offload` leaves them on a DiT whose root owns no parameters)."""
    for module in modules_of(pipe).values():
        if importlib.util.find_spec("accelerate") is not None:
            from accelerate.hooks import remove_hook_from_module

            remove_hook_from_module(module, recurse=True)
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is None:
                continue
            for hook in _DIFFUSERS_HOOKS:
                if registry.get_hook(hook) is not None:
                    registry.remove_hook(hook, recurse=False)
    if hasattr(pipe, "_all_hooks"):
        pipe._all_hooks = []
    pipe.__dict__.pop("_offload_gpu_id", None)
    pipe.__dict__.pop("_offload_device", None)


@torch.no_grad()
def to_pageable_cpu(pipe: Any) -> None:
    """Every parameter and buffer into fresh pageable CPU memory, unless it is there already
    (a device copy, or a pinned host copy a mode left behind, is copied out and dropped)."""
    for name, module in modules_of(pipe).items():
        for sub in module.modules():
            for key, t in [*sub._parameters.items(), *sub._buffers.items()]:
                if t is None:
                    continue
                if t.device.type == "meta":
                    raise RuntimeError(f"{name}: {key} left on meta by an offload mode's removal")
                if t.device.type == "cpu" and not t.is_pinned():
                    continue
                fresh = torch.empty(t.shape, dtype=t.dtype, device="cpu").copy_(t.data)
                if isinstance(t, nn.Parameter):
                    t.data = fresh
                else:
                    sub._buffers[key] = fresh
    if torch.cuda.is_available():
        torch.cuda.synchronize()
