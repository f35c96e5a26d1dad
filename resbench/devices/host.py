"""Host copies of weights for the CUDA device, and the random weights resbench runs with.

`HostWeights` holds every unit's authoritative copy as ONE contiguous uint8 buffer per unit
with its tensors at 256-byte-aligned offsets, so a unit moves as one DMA. Pinned buffers are
exactly sized: page-locked with `cudaHostRegister`, not `pin_memory=True`, whose caching host
allocator rounds each block up to a power of two (a 670 MiB Wan block would take 1 GiB).
Pageable copies, for plans that ask for them, are made from the pinned ones on demand.
`build_weights` fills components with seeded random values on the GPU and captures them here,
once per process; every `CudaDevice` (one per run) shares them, so pinning is paid once.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resbench.devices.base import UnitKey
from resbench.devices.cpu import _rebind
from resbench.errors import DoesNotFitError
from resbench.models.base import (
    ComponentSpec,
    TensorSlot,
    build_component,
    component_of,
    init_buffers,
    tensor_seed,
    to_empty_keeping_ties,
    unit_slots,
)

ALIGN = 256
HOST_RESERVE_BYTES = 4 * 2**30
"""Host memory left free when deciding whether pageable copies fit (the process, the OS)."""


class HostMemoryError(DoesNotFitError):
    """The plan needs more host memory than this host has available."""


def host_available_bytes() -> int | None:
    """`MemAvailable` now (it grows on hosts whose memory is given as used); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------- host copies


@dataclass(frozen=True, slots=True)
class UnitLayout:
    """Where each tensor of a unit sits in its contiguous buffer (byte offsets, 256-aligned)."""

    offsets: tuple[int, ...]
    nbytes: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]
    total: int

    @classmethod
    def of(cls, tensors: Iterable[torch.Tensor]) -> UnitLayout:
        offsets, sizes, dtypes, shapes = [], [], [], []
        at = 0
        for t in tensors:
            at = -(-at // ALIGN) * ALIGN
            n = t.numel() * t.element_size()
            offsets.append(at)
            sizes.append(n)
            dtypes.append(t.dtype)
            shapes.append(tuple(t.shape))
            at += n
        return cls(tuple(offsets), tuple(sizes), tuple(dtypes), tuple(shapes), at)

    def views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """Typed tensors viewed into `buf` (a uint8 buffer of at least `total` bytes)."""
        return [buf[o:o + n].view(d).view(s) for o, n, d, s in
                zip(self.offsets, self.nbytes, self.dtypes, self.shapes, strict=True)]


@dataclass(slots=True)
class HostUnit:
    layout: UnitLayout
    pinned: torch.Tensor | None = None
    pageable: torch.Tensor | None = None
    ready: Any = None  # event of a D2H still writing `pinned`; an H2D must wait for it


@dataclass
class HostWeights:
    """Every unit's host copy. Units of identical components may share one (`alias`)."""

    units: dict[UnitKey, HostUnit] = field(default_factory=dict)
    _registered: list[torch.Tensor] = field(default_factory=list)

    def capture(self, key: UnitKey, tensors: list[torch.Tensor], *, pin: bool = True) -> None:
        """Copy `tensors` (any device) into a new host buffer for `key`."""
        layout = UnitLayout.of(tensors)
        unit = HostUnit(layout)
        buf = self._new(layout.total, pin)
        for view, t in zip(layout.views(buf), tensors, strict=True):
            view.copy_(t.detach(), non_blocking=pin)
        if pin:
            unit.pinned = buf
        else:
            unit.pageable = buf
        self.units[key] = unit

    def alias(self, key: UnitKey, source: UnitKey) -> None:
        self.units[key] = self.units[source]

    def _new(self, nbytes: int, pin: bool) -> torch.Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        if pin and nbytes:
            # cudaHostRegister locks exactly these pages; torch.empty(pin_memory=True) would go
            # through the caching host allocator, which rounds up to a power of two.
            cudart = torch.cuda.cudart()
            torch.cuda.check_error(cudart.cudaHostRegister(buf.data_ptr(), nbytes, 0))
            self._registered.append(buf)
        return buf

    def source(self, key: UnitKey, pinned: bool) -> torch.Tensor:
        """The unit's host buffer of the kind asked for, made from the other kind if needed."""
        unit = self.units[key]
        if pinned and unit.pinned is None:
            assert unit.pageable is not None
            unit.pinned = self._new(unit.layout.total, True)
            unit.pinned.copy_(unit.pageable)
        if not pinned and unit.pageable is None:
            assert unit.pinned is not None
            if unit.ready is not None:
                unit.ready.synchronize()
            unit.pageable = unit.pinned.clone()
        out = unit.pinned if pinned else unit.pageable
        assert out is not None
        return out

    def drop_pageable(self) -> None:
        for unit in self.units.values():
            if unit.pinned is not None:
                unit.pageable = None

    def pinned_bytes(self) -> int:
        """Host bytes page-locked for weights (each shared buffer counted once)."""
        return sum(b.numel() for b in self._registered)

    def host_bytes(self) -> int:
        seen: dict[int, int] = {}
        for u in self.units.values():
            for b in (u.pinned, u.pageable):
                if b is not None:
                    seen[b.data_ptr()] = b.numel()
        return sum(seen.values())

    def release(self, key: UnitKey) -> None:
        """Forget one unit's host copy, unlocking its pinned buffer unless another unit
        shares it: its memory goes back with the last view of it."""
        unit = self.units.pop(key)
        buf = unit.pinned
        if buf is None or any(u.pinned is buf for u in self.units.values()):
            return
        for i, registered in enumerate(self._registered):
            if registered is buf:
                if unit.ready is not None:
                    unit.ready.synchronize()
                torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(buf.data_ptr()))
                del self._registered[i]
                return

    def close(self) -> None:
        """Unlock every registered buffer (call before dropping the last reference)."""
        if self._registered:
            torch.cuda.synchronize()
            cudart = torch.cuda.cudart()
            for buf in self._registered:
                torch.cuda.check_error(cudart.cudaHostUnregister(buf.data_ptr()))
        self._registered.clear()
        self.units.clear()


@dataclass
class Weights:
    """Components bound to 0-size CUDA placeholders plus their host copies (see `build_weights`)."""

    components: dict[str, nn.Module]
    host: HostWeights
    scale: float
    seed: int
    shared: dict[str, str] = field(default_factory=dict)  # component → component it aliases


@torch.no_grad()
def fill_random(module: nn.Module, *, seed: int = 0, component: str | None = None) -> nn.Module:
    """Seeded random values drawn where the module lives (fast on the GPU).

    Same rules as `models.base.materialize` (N(0, 1/fan_in) matrices, ones for norm scales,
    small noise otherwise, buffers zero or `_init_buffers`) and the same per-tensor seeds,
    (seed, component name, qualified name), with `component` defaulting to the name
    `build_component` recorded. The generator lives on the module's device: values differ
    from a CPU `materialize`, and are the same for every run with the same seed on the same
    card.
    """
    component = component_of(module, component)
    for qualname, p in module.named_parameters():
        gen = torch.Generator(device=p.device).manual_seed(tensor_seed(seed, component, qualname))
        if p.dim() >= 2:
            p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
        elif qualname.endswith("weight") and ("norm" in qualname or qualname.endswith("g")):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    init_buffers(module)
    return module


def unbind(module: nn.Module, device: torch.device | str) -> None:
    """Rebind every parameter and buffer to a 0-size tensor on `device` (frees the storage)."""
    for slots in unit_slots(module).values():
        for m, n in slots:
            t = getattr(m, n)
            _rebind(m, n, torch.empty(0, dtype=t.dtype, device=device))


def capture_units(host: HostWeights, component: str,
                  units: Mapping[str, Sequence[TensorSlot]], *, pin: bool = True) -> None:
    """Copy each unit's tensors (read through its slots) into its own host buffer."""
    for unit, slots in units.items():
        host.capture((component, unit), [getattr(m, n) for m, n in slots], pin=pin)


def _signature(module: nn.Module) -> tuple[Any, ...]:
    return (type(module).__qualname__,
            tuple((n, tuple(t.shape), t.dtype) for n, t in module.state_dict(keep_vars=True).items()))


def build_weights(components: Iterable[ComponentSpec], *, scale: float = 1.0, seed: int = 0,
                  device: torch.device | str = "cuda", share_identical: bool = False,
                  pin: bool = True) -> Weights:
    """Build each component on meta, fill it on the GPU, copy its units to host, free the GPU.

    One component at a time, so the card only ever holds the largest one. Every component
    gets its own weights (`fill_random`, seeded by component name), so Wan2.2's two experts
    differ and an output check can tell which one ran. `share_identical` is for timing runs
    short of host memory: a component with the same class and tensor shapes as one already
    built shares its host copies (same bytes moved, half the host memory and pinning time),
    so both experts hold the first one's weights and a wrong-expert bug no longer shows in
    the output; `Weights.shared` records which components alias which.
    """
    device = torch.device(device)
    host = HostWeights()
    built: dict[tuple[Any, ...], str] = {}
    out: dict[str, nn.Module] = {}
    shared: dict[str, str] = {}
    for spec in components:
        module = build_component(spec, scale)
        sig = _signature(module)
        source = built.get(sig) if share_identical else None
        to_empty_keeping_ties(module, device)
        if source is None:
            fill_random(module, seed=seed, component=spec.name)
            capture_units(host, spec.name, unit_slots(module), pin=pin)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            built[sig] = spec.name
        else:
            shared[spec.name] = source
            for unit in unit_slots(module):
                host.alias((spec.name, unit), (source, unit))
        unbind(module, device)
        out[spec.name] = module
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return Weights(out, host, scale, seed, shared)
