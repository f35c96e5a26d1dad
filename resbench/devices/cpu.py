"""`CpuDevice`: two CPU memory pools with real tensor moves.

The "host" pool holds each unit's authoritative copy; the "device" pool holds the copies
the forward pass reads. A unit not on the device has its parameters rebound to empty
placeholders, so a forward that touches a unit the manager forgot to load fails loudly.
Moves are real copies, so any strategy can be checked for bitwise-equal outputs against the
unmanaged run on a machine without a GPU. Time is wall-clock; memory is a ledger against an
optional capacity (to test budget errors).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from resbench.devices.base import Device, Ledger, Transfer, UnitKey
from resbench.models.base import TensorSlot
from resbench.schedule import UnitCall


class CpuDevice(Device):
    name = "cpu"
    kind = "cpu"

    def __init__(self, units: Mapping[str, Mapping[str, Sequence[TensorSlot]]],
                 capacity_bytes: int = 1 << 62) -> None:
        """`units`: component → unit → the slots of its tensors (`pipeline.unit_slots_of`).
        Each unit's tensors are copied to the host pool and their slots rebound to
        placeholders."""
        self.ledger = Ledger(capacity_bytes)
        self._t0 = time.perf_counter()
        self._slots: dict[UnitKey, list[TensorSlot]] = {}
        self._host: dict[UnitKey, list[torch.Tensor]] = {}
        self._nbytes: dict[UnitKey, int] = {}
        self._pinned: dict[UnitKey, bool] = {}
        for comp, comp_units in units.items():
            for unit, unit_slots in comp_units.items():
                key = (comp, unit)
                slots = list(unit_slots)
                self._slots[key] = slots
                self._host[key] = [getattr(m, n).detach().clone() for m, n in slots]
                self._nbytes[key] = sum(t.numel() * t.element_size() for t in self._host[key])
                for (m, n), t in zip(slots, self._host[key], strict=True):
                    _rebind(m, n, torch.empty(0, dtype=t.dtype))

    # -- host side ---------------------------------------------------------------------------
    def register(self, key: UnitKey, nbytes: int, *, pinned: bool) -> None:
        self._pinned[key] = pinned

    def pinned_bytes(self) -> int:
        return sum(self._nbytes[k] for k, p in self._pinned.items() if p)

    def host_tensors(self, key: UnitKey) -> list[torch.Tensor]:
        return self._host[key]

    def release_host(self, key: UnitKey) -> None:
        del self._host[key]

    # -- moves -------------------------------------------------------------------------------
    def place_unmanaged(self, key: UnitKey) -> None:
        self.ledger.place(key, self._nbytes[key], None)
        self._bind_copies(key)

    def h2d(self, key: UnitKey, *, pool: str | None = None) -> Transfer:
        start = self.now()
        self.ledger.place(key, self._nbytes[key], pool)
        self._bind_copies(key)
        return Transfer(key, self._nbytes[key], start, self.now(), "h2d", "h2d")

    def _bind_copies(self, key: UnitKey) -> None:
        for (m, n), host in zip(self._slots[key], self._host[key], strict=True):
            _rebind(m, n, host.clone())

    def wait(self, transfer: Transfer) -> Any:
        return self.now()

    def drop(self, key: UnitKey) -> None:
        self.ledger.remove(key, self._nbytes[key])
        for (m, n), host in zip(self._slots[key], self._host[key], strict=True):
            _rebind(m, n, torch.empty(0, dtype=host.dtype))

    def d2h(self, key: UnitKey) -> Transfer:
        start = self.now()
        for (m, n), host in zip(self._slots[key], self._host[key], strict=True):
            host.copy_(getattr(m, n).detach())
        self.drop(key)
        return Transfer(key, self._nbytes[key], start, self.now(), "d2h", "d2h")

    def on_device(self, key: UnitKey) -> bool:
        return key in self.ledger.where

    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        self.ledger.alloc_pool(name, slot_bytes, slots)

    def free_pool(self, name: str) -> None:
        self.ledger.free_pool(name)

    # -- time and memory ---------------------------------------------------------------------
    def compute_begin(self, call: UnitCall) -> Any:
        return self.now()

    def compute_end(self, call: UnitCall) -> Any:
        return self.now()

    def used_bytes(self) -> int:
        return self.ledger.used

    def free_bytes(self) -> int:
        return self.ledger.capacity_bytes - self.ledger.used

    def peak_bytes(self) -> int:
        return self.ledger.peak

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def resolve(self, token: Any) -> float:
        return float(token)

    def capacity_bytes(self) -> int:
        return self.ledger.capacity_bytes

    def clock_s(self) -> float:
        return self.now()


def _rebind(module: nn.Module, name: str, value: torch.Tensor) -> None:
    current = getattr(module, name)
    if isinstance(current, nn.Parameter):
        current.data = value
    else:
        module._buffers[name] = value
