"""`CudaDevice`: the real card — a compute stream, an H2D and a D2H copy stream, events.

Host side: `HostWeights` holds every unit's authoritative copy as ONE contiguous uint8 buffer
per unit with its tensors at 256-byte-aligned offsets, so a unit moves as one DMA. Pinned
buffers are exactly sized: page-locked with `cudaHostRegister`, not `pin_memory=True`, whose
caching host allocator rounds each block up to a power of two (a 670 MiB Wan block would take
1 GiB). Pageable copies, for plans that ask for them, are made from the pinned ones on demand.
`HostWeights` is built once per process (`build_weights`) and shared by every `CudaDevice`
(one per run), so pinning is paid once.

Device side: a unit lands in a fresh buffer (`torch.empty` on the copy stream) or in a slot of
a staging pool (fixed buffers allocated once). Parameters are rebound to views of that buffer,
and to 0-size placeholders when the unit leaves, so a forward that touches a unit the manager
did not load fails loudly. Ordering uses events only, never a device synchronize:

* compute waits for a copy with `wait_event` on the copy's end event;
* a copy into a pool slot waits for the event recorded on the compute stream when the slot's
  previous occupant was dropped (or on the D2H stream when it was copied back);
* a D2H copy waits for the compute stream, and the unit's next H2D waits for the D2H.

Pageable copies run on the compute stream and block the host, as `.to(device)` from
pageable memory does (the simulator models them the same way).

Time tokens are CUDA events; `resolve` turns one into seconds since the device was created
(after one synchronize). The ledger is the caching allocator's: `memory_allocated()` against
the budget, which is enforced with `set_per_process_memory_fraction` by the caller
(`resbench.execution.CudaBackend`). A `Ledger` in program order tracks pool slots and weight bytes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resbench.devices.base import Device, Ledger, Transfer, UnitKey
from resbench.devices.cpu import _rebind
from resbench.errors import DeviceOOMError, DoesNotFitError
from resbench.models.base import (
    REST,
    ComponentSpec,
    TensorSlot,
    build_component,
    component_of,
    tensor_seed,
    unit_slots,
)
from resbench.schedule import UnitCall
from resbench.units import format_bytes

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
    for mod in module.modules():
        init = getattr(mod, "_init_buffers", None)
        if callable(init):
            init()
        else:
            for b in mod.buffers(recurse=False):
                if b is not None:
                    b.zero_()
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
        module.to_empty(device=device)
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


# ----------------------------------------------------------------------------------- device


class CudaDevice(Device):
    name = "cuda"
    kind = "cuda"

    def __init__(self, units: Mapping[str, Mapping[str, Sequence[TensorSlot]]], host: HostWeights,
                 *, budget_bytes: int | None = None, device: torch.device | str = "cuda") -> None:
        """`units`: component → unit → the slots of its tensors (`pipeline.unit_slots_of`);
        `host` holds a copy of every unit (`build_weights`)."""
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        total = torch.cuda.get_device_properties(self.device).total_memory
        self.budget_bytes = int(budget_bytes) if budget_bytes is not None else int(total)
        self.host = host
        self.compute = torch.cuda.current_stream(self.device)
        self.h2d_stream = torch.cuda.Stream(self.device)
        self.d2h_stream = torch.cuda.Stream(self.device)
        self.ledger = Ledger(1 << 62)  # pool slots and weight bytes in program order
        self.setup_from_pinned = False  # see begin_setup
        self._slots: dict[UnitKey, list[TensorSlot]] = {
            (comp, unit): list(slots) for comp, comp_units in units.items()
            for unit, slots in comp_units.items()}
        missing = [k for k in self._slots if k not in host.units]
        if missing:
            raise ValueError(f"no host copy for units {missing[:3]} (and {len(missing) - 3} more)"
                             if len(missing) > 3 else f"no host copy for units {missing}")
        self._nbytes = {k: sum(host.units[k].layout.nbytes) for k in self._slots}
        self._pinned: dict[UnitKey, bool] = {}
        self._bufs: dict[UnitKey, torch.Tensor] = {}  # device buffer (fresh, or a slot view)
        self._unwaited: dict[UnitKey, torch.cuda.Event] = {}
        self._pools: dict[str, list[torch.Tensor]] = {}
        self._slot_free: dict[tuple[str, int], torch.cuda.Event] = {}
        self._slot_of: dict[UnitKey, tuple[str, int]] = {}
        self._empty: dict[torch.dtype, torch.Tensor] = {}
        self._pad = ALIGN * max((len(s) for s in self._slots.values()), default=1)
        self._dirty = True
        torch.cuda.reset_peak_memory_stats(self.device)
        self._t0 = self._event(self.compute)

    # -- host side ---------------------------------------------------------------------------
    def register(self, key: UnitKey, nbytes: int, *, pinned: bool) -> None:
        self._pinned[key] = pinned
        if not self.setup_from_pinned:
            self.host.source(key, pinned)  # make a pageable copy now, outside the request

    def begin_setup(self) -> None:
        """Until `end_setup`, loads come from the pinned slab whatever the plan says: setup is
        not part of the request, and resident units never move again."""
        self.setup_from_pinned = True

    def end_setup(self) -> None:
        """Make the host copies the request will stream from (pageable ones where asked).

        Pageable copies are made beside the pinned slabs: a plan streaming all of Wan2.2
        pageable needs 69 GB more host memory. When the host cannot hold them the plan
        does not fit this host, raised as `HostMemoryError` before anything is copied;
        otherwise the kernel would kill the process mid-copy."""
        self.setup_from_pinned = False
        needed = sum(self._nbytes[k] for k, pinned in self._pinned.items()
                     if not pinned and k not in self._bufs and self.host.units[k].pageable is None)
        available = host_available_bytes()
        if available is not None and needed > available - HOST_RESERVE_BYTES:
            raise HostMemoryError(
                f"the plan streams {format_bytes(needed)} from pageable host copies, made beside "
                f"the pinned weights, but only {format_bytes(available)} of host memory is "
                f"available (keeping {format_bytes(HOST_RESERVE_BYTES)} free)",
                component="host", missing_bytes=needed - available + HOST_RESERVE_BYTES)
        for key, pinned in self._pinned.items():
            if key not in self._bufs:
                self.host.source(key, pinned)

    def pinned_bytes(self) -> int:
        return sum(self._nbytes[k] for k, p in self._pinned.items() if p)

    def host_tensors(self, key: UnitKey) -> list[torch.Tensor]:
        """Views of the unit's host buffer (pinned if it has one): valid until the host
        copies are closed, so copy them out first."""
        unit = self.host.units[key]
        if unit.ready is not None:
            unit.ready.synchronize()  # a D2H copy may still be writing the buffer
        buf = unit.pinned if unit.pinned is not None else unit.pageable
        assert buf is not None
        return unit.layout.views(buf)

    def unit_keys(self) -> list[UnitKey]:
        return list(self._slots)

    # -- moves -------------------------------------------------------------------------------
    def _event(self, stream: torch.cuda.Stream) -> torch.cuda.Event:
        e = torch.cuda.Event(enable_timing=True)
        e.record(stream)
        self._dirty = True
        return e

    def _resident(self) -> str:
        by: dict[str, list[int]] = {}
        for key in self._bufs:
            entry = by.setdefault(key[0], [0, 0])
            entry[0] += 1
            entry[1] += self._nbytes[key]
        parts = [f"{c}: {n} units, {format_bytes(b)}" for c, (n, b) in by.items()]
        parts += [f"pool {p}: {len(s)} x {format_bytes(s[0].numel())}"
                  for p, s in self._pools.items() if s]
        return "; ".join(parts) or "nothing"

    def _oom(self, what: str, key: UnitKey | None, nbytes: int) -> DeviceOOMError:
        resident = self._resident()
        allocated = torch.cuda.memory_allocated(self.device)
        torch.cuda.empty_cache()
        comp, unit = key if key else (None, None)
        return DeviceOOMError(
            f"out of device memory loading {what} ({format_bytes(nbytes)}) with "
            f"{format_bytes(allocated)} allocated of the {format_bytes(self.budget_bytes)} budget; "
            f"on the device: {resident}",
            component=comp, unit=unit,
            missing_bytes=max(0, allocated + nbytes - self.budget_bytes))

    def _bind(self, key: UnitKey, buf: torch.Tensor) -> None:
        self._bufs[key] = buf
        views = self.host.units[key].layout.views(buf)
        for (m, n), v in zip(self._slots[key], views, strict=True):
            _rebind(m, n, v)

    def _unbind(self, key: UnitKey) -> None:
        for m, n in self._slots[key]:
            current = getattr(m, n)
            dtype = current.dtype
            if not isinstance(current, nn.Parameter):
                # A buffer slot holds the placeholder object itself: one shared by several
                # buffers would make them one tensor to whoever lists the slots next.
                _rebind(m, n, torch.empty(0, dtype=dtype, device=self.device))
                continue
            empty = self._empty.get(dtype)
            if empty is None:
                empty = self._empty[dtype] = torch.empty(0, dtype=dtype, device=self.device)
            _rebind(m, n, empty)
        del self._bufs[key]

    def _take_buffer(self, key: UnitKey, pool: str | None, stream: torch.cuda.Stream) -> torch.Tensor:
        total = self.host.units[key].layout.total
        slot = self.ledger.place(key, self._nbytes[key], pool)
        if slot is None:
            try:
                with torch.cuda.stream(stream):
                    buf = torch.empty(total, dtype=torch.uint8, device=self.device)
            except torch.cuda.OutOfMemoryError:
                self.ledger.remove(key, self._nbytes[key])
                err = self._oom(f"{key[0]}.{key[1]}", key, total)
            else:
                if stream is not self.compute:
                    # Allocated on the copy stream, read by kernels on the compute stream: without
                    # record_stream the allocator could hand the block to the next copy as soon
                    # as it is freed, while compute still reads the weights.
                    buf.record_stream(self.compute)
                return buf
            raise err
        assert pool is not None
        self._slot_of[key] = (pool, slot)
        free = self._slot_free.pop((pool, slot), None)
        if free is not None:
            stream.wait_event(free)  # the slot's previous occupant is done being read
        return self._pools[pool][slot][:total]

    def h2d(self, key: UnitKey, *, pool: str | None = None) -> Transfer:
        pinned = self._pinned.get(key, True)
        if self.setup_from_pinned and self.host.units[key].pinned is not None:
            pinned = True  # setup is not timed: resident units come from the pinned slab
        src = self.host.source(key, pinned)
        stream = self.h2d_stream if pinned else self.compute
        buf = self._take_buffer(key, pool, stream)
        ready = self.host.units[key].ready
        if ready is not None:
            stream.wait_event(ready)  # a D2H of this unit is still writing the host copy
        start = self._event(stream)
        with torch.cuda.stream(stream):
            buf.copy_(src, non_blocking=pinned)
        end = self._event(stream)
        self._bind(key, buf)
        if not pinned:
            return Transfer(key, self._nbytes[key], start, end, "h2d", "compute", handle=end)
        self._unwaited[key] = end
        return Transfer(key, self._nbytes[key], start, end, "h2d", "h2d", handle=end)

    def place_unmanaged(self, key: UnitKey) -> None:
        src = self.host.source(key, self.host.units[key].pinned is not None)
        buf = self._take_buffer(key, None, self.compute)
        buf.copy_(src)
        self._bind(key, buf)

    def wait(self, transfer: Transfer) -> Any:
        at = self._event(self.compute)  # before the wait: the moment compute reached it
        if transfer.stream != "compute":
            self.compute.wait_event(transfer.handle)
            self._unwaited.pop(transfer.key, None)
        return at

    def _release(self, key: UnitKey, done: torch.cuda.Event | None) -> None:
        """Unbind and free `key`; `done` is the event after which its buffer may be reused."""
        pending = self._unwaited.pop(key, None)
        if pending is not None:
            self.compute.wait_event(pending)  # never free a buffer a copy may still write
        slot = self._slot_of.pop(key, None)
        if slot is not None:
            self._slot_free[slot] = done if done is not None else self._event(self.compute)
        self._unbind(key)
        self.ledger.remove(key, self._nbytes[key])

    def drop(self, key: UnitKey) -> None:
        self._release(key, None)

    def d2h(self, key: UnitKey) -> Transfer:
        buf = self._bufs[key]
        unit = self.host.units[key]
        total = unit.layout.total
        pending = self._unwaited.pop(key, None)
        if pending is not None:
            self.compute.wait_event(pending)
        if not self._pinned.get(key, True) or unit.pinned is None:
            start = self._event(self.compute)
            self.host.source(key, False).copy_(buf[:total])
            end = self._event(self.compute)
            self._release(key, None)
            return Transfer(key, self._nbytes[key], start, end, "d2h", "compute", handle=end)
        self.d2h_stream.wait_event(self._event(self.compute))
        start = self._event(self.d2h_stream)
        with torch.cuda.stream(self.d2h_stream):
            unit.pinned.copy_(buf[:total], non_blocking=True)
        end = self._event(self.d2h_stream)
        # The D2H stream reads the buffer after the host frees it: keep the block (or the
        # pool slot, through `done`) from being reused before the copy ends.
        buf.record_stream(self.d2h_stream)
        unit.ready = end
        self._release(key, end)
        return Transfer(key, self._nbytes[key], start, end, "d2h", "d2h", handle=end)

    def on_device(self, key: UnitKey) -> bool:
        return key in self.ledger.where

    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        size = slot_bytes + self._pad  # room for the 256-byte alignment of each tensor
        try:
            bufs = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(slots)]
        except torch.cuda.OutOfMemoryError:
            err = self._oom(f"staging pool {name} ({slots} slots)", (name.split(".")[0], "staging"),
                            size * slots)
        else:
            for b in bufs:
                # Allocated on the compute stream, written by the H2D stream: if the pool is freed
                # while a copy into a slot is queued, the block must wait for that copy.
                b.record_stream(self.h2d_stream)
            self.ledger.alloc_pool(name, slot_bytes, slots)
            self._pools[name] = bufs
            return
        raise err

    def free_pool(self, name: str) -> None:
        self.ledger.free_pool(name)
        del self._pools[name]
        for key in [k for k in self._slot_free if k[0] == name]:
            del self._slot_free[key]

    # -- time and memory ---------------------------------------------------------------------
    def compute_begin(self, call: UnitCall) -> Any:
        return self._event(self.compute)

    def compute_end(self, call: UnitCall) -> Any:
        return self._event(self.compute)

    def used_bytes(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def free_bytes(self) -> int:
        return self.budget_bytes - torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def peak_reserved_bytes(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)

    def now(self) -> Any:
        return self._event(torch.cuda.current_stream(self.device))

    def capacity_bytes(self) -> int:
        return self.budget_bytes

    def clock_s(self) -> float:
        torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def ledger_peak_bytes(self) -> int:
        return self.ledger.peak

    def resolve(self, token: Any) -> float:
        if not isinstance(token, torch.cuda.Event):
            return float(token)
        if self._dirty:
            torch.cuda.synchronize(self.device)
            self._dirty = False
        return self._t0.elapsed_time(token) / 1e3

    def close(self) -> None:
        """Free every device copy (resident units too), the pools and the pageable host
        copies this run made; placeholders stay bound."""
        torch.cuda.synchronize(self.device)
        self.host.drop_pageable()
        for key in list(self._bufs):
            self._unbind(key)
        self._pools.clear()
        self._slot_free.clear()
        self._slot_of.clear()
        self._unwaited.clear()
        self.ledger = Ledger(1 << 62)
        gc.collect()
        torch.cuda.empty_cache()


__all__ = ["REST", "CudaDevice", "HostWeights", "UnitLayout", "Weights", "build_weights",
           "capture_units", "fill_random", "unbind"]
