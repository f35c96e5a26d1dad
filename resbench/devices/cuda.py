"""`CudaDevice`: the real card — a compute stream, an H2D and a D2H copy stream, events.

Host side: `resbench.devices.host` (one contiguous, exactly pinned buffer per unit, built
once per process by `build_weights` and shared by every `CudaDevice`).

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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from resbench.devices.base import Device, Ledger, Transfer, UnitKey
from resbench.devices.cpu import _rebind
from resbench.devices.host import (  # the host side of this device, re-exported
    ALIGN,
    HOST_RESERVE_BYTES,
    HostMemoryError,
    HostWeights,
    UnitLayout,
    Weights,
    build_weights,
    capture_units,
    fill_random,
    host_available_bytes,
    unbind,
)
from resbench.errors import DeviceOOMError
from resbench.models.base import (
    REST,
    TensorSlot,
)
from resbench.schedule import UnitCall
from resbench.units import format_bytes

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

    def release_host(self, key: UnitKey) -> None:
        """Forget the unit's host copy (after `host_tensors` was copied out)."""
        self.host.release(key)

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
