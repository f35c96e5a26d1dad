"""The `Device` contract: the only way the residency manager touches memory and time.

The manager never knows which device it runs on. It names units by `UnitKey`
(component, unit) and asks the device to:

* `h2d(key, pinned=..., pool=...)` — issue a host→device copy of one unit on the copy
  stream and return a `Transfer`. The unit's device bytes are allocated *now* (program
  order), from the staging pool `pool` when given (fixed buffers, reused) or fresh.
  A copy into a pool slot starts only after the compute that used the slot's previous
  occupant has finished (the device orders this with events, never a device sync).
* `wait(transfer)` — make the compute stream wait for the transfer; returns a time token of
  the moment compute reached the wait (the stall is resolved later from the transfer end).
* `drop(key)` — free the unit's device copy (its host copy stays authoritative).
* `d2h(key)` — copy the unit back to its host slab (weights changed on the device), then
  free the device copy; returns the `Transfer`.
* `alloc_pool(name, slot_bytes, slots)` / `free_pool(name)` — fixed staging buffers.
* `compute_begin(call)` / `compute_end(call)` — bracket one unit call on the compute stream
  (the simulator advances its clock here; real devices record time tokens).
* `used_bytes()`, `free_bytes()`, `peak_bytes()` — the device-memory ledger against the
  budget; `pinned_bytes()` — host memory pinned for units.
* `now()` — a time token on the compute stream; `resolve(token)` → seconds since start.

Memory is accounted in program order (as the caching allocator does on the host): a unit
counts from `h2d` until `drop`/`d2h`. A device that cannot satisfy an allocation raises
`DoesNotFitError` naming the unit and the bytes missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from resbench.errors import DoesNotFitError
from resbench.schedule import UnitCall
from resbench.units import format_bytes

UnitKey = tuple[str, str]


@dataclass(slots=True)
class Transfer:
    """A copy in flight. `start`/`end` are device time tokens; `nbytes` its size."""

    key: UnitKey
    nbytes: int
    start: Any
    end: Any
    direction: str  # "h2d" | "d2h"
    stream: str  # "h2d", "d2h", or "compute" for a copy that blocks compute (pageable)
    handle: Any = None  # device-specific (CUDA event)


class Device(Protocol):
    name: str
    kind: str  # "cpu" | "cuda" | "sim"

    def register(self, key: UnitKey, nbytes: int, *, pinned: bool) -> None: ...
    def place_unmanaged(self, key: UnitKey) -> None: ...
    def h2d(self, key: UnitKey, *, pool: str | None = None) -> Transfer: ...
    def wait(self, transfer: Transfer) -> Any: ...
    def drop(self, key: UnitKey) -> None: ...
    def d2h(self, key: UnitKey) -> Transfer: ...
    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None: ...
    def free_pool(self, name: str) -> None: ...
    def compute_begin(self, call: UnitCall) -> Any: ...
    def compute_end(self, call: UnitCall) -> Any: ...
    def used_bytes(self) -> int: ...
    def free_bytes(self) -> int: ...
    def peak_bytes(self) -> int: ...
    def pinned_bytes(self) -> int: ...
    def now(self) -> Any: ...
    def resolve(self, token: Any) -> float: ...
    def on_device(self, key: UnitKey) -> bool: ...


class Ledger:
    """Program-order byte ledger against a capacity, shared by the CPU and simulated devices.

    Pools are charged once when allocated; units placed in a pool slot cost nothing more.
    """

    def __init__(self, capacity_bytes: int, reserved_bytes: int = 0) -> None:
        self.capacity_bytes = capacity_bytes
        self.used = reserved_bytes
        self.peak = reserved_bytes
        self.pool_slots: dict[str, list[UnitKey | None]] = {}
        self.pool_bytes: dict[str, int] = {}
        self.where: dict[UnitKey, str | None] = {}  # on-device units → pool name or None

    def charge(self, nbytes: int, key: UnitKey | None, what: str = "") -> None:
        used = self.used + nbytes
        if used > self.capacity_bytes:
            raise self.does_not_fit(nbytes, key, what)
        self.used = used
        if used > self.peak:
            self.peak = used

    def does_not_fit(self, nbytes: int, key: UnitKey | None, what: str = "") -> DoesNotFitError:
        """The error for `nbytes` more not fitting now; `what` names them (default: `key`)."""
        missing = self.used + nbytes - self.capacity_bytes
        comp, unit = key if key else ("", "")
        return DoesNotFitError(
            f"{what or f'{comp}.{unit}'} needs {format_bytes(nbytes)} but only "
            f"{format_bytes(max(0, self.capacity_bytes - self.used))} of the "
            f"{format_bytes(self.capacity_bytes)} budget is free "
            f"({format_bytes(missing)} missing)",
            component=comp or None, unit=unit or None, missing_bytes=missing,
        )

    def credit(self, nbytes: int) -> None:
        self.used -= nbytes

    def place(self, key: UnitKey, nbytes: int, pool: str | None) -> int | None:
        """Account a unit arriving; returns the pool slot index it took (None: fresh memory)."""
        if pool is None:
            self.charge(nbytes, key)
            self.where[key] = None
            return None
        slots = self.pool_slots[pool]
        if nbytes > self.pool_bytes[pool]:
            raise ValueError(f"{key} ({nbytes} B) does not fit a slot of pool {pool}")
        try:
            i = slots.index(None)
        except ValueError:
            raise RuntimeError(f"staging pool {pool} has no free slot for {key}: {slots}") from None
        slots[i] = key
        self.where[key] = pool
        return i

    def remove(self, key: UnitKey, nbytes: int) -> None:
        pool = self.where.pop(key)
        if pool is None:
            self.credit(nbytes)
            return
        slots = self.pool_slots[pool]
        slots[slots.index(key)] = None

    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        self.charge(slot_bytes * slots, (name, "staging"), f"staging pool {name}")
        self.pool_slots[name] = [None] * slots
        self.pool_bytes[name] = slot_bytes

    def free_pool(self, name: str) -> None:
        slots = self.pool_slots.pop(name)
        assert all(s is None for s in slots), f"pool {name} freed while holding {slots}"
        self.credit(self.pool_bytes.pop(name) * len(slots))
