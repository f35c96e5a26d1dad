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
* `merge(merge, apply)` — merge an adapter into the device copies of a component's units on
  the compute stream (`apply` does it on real tensors; the simulator prices it from the
  schedule's costs); returns (start, end) time tokens.
* `alloc_pool(name, slot_bytes, slots)` / `free_pool(name)` — fixed staging buffers.
* `compute_begin(call)` / `compute_end(call)` — bracket one unit call on the compute stream
  (the simulator advances its clock here; real devices record time tokens).
* `used_bytes()`, `free_bytes()`, `peak_bytes()` — the device-memory ledger against the
  budget; `pinned_bytes()` — host memory pinned for units.
* `now()` — a time token on the compute stream; `resolve(token)` → seconds since start.

Lifecycle (the base class gives each a no-op default, so callers never ask which device
they hold): `begin_setup()` / `end_setup()` bracket the loads before the first request (a
real card takes them from pinned memory whatever the plan says); `clock_s()` is the
device's clock in seconds once all issued work has finished (the simulator's virtual
compute clock; a real device synchronises, then reads the host clock); `compute_busy_s()`
the seconds the compute stream was busy when the device knows it without a trace (None
otherwise); `close()` frees every device copy and pool — a device is used for one run.

Memory is accounted in program order (as the caching allocator does on the host): a unit
counts from `h2d` until `drop`/`d2h`. A device that cannot satisfy an allocation raises
`DoesNotFitError` naming the unit and the bytes missing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resbench.errors import DoesNotFitError
from resbench.schedule import MergeCall, UnitCall
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


class Device(ABC):
    """Base of the three devices: the operations above are abstract, the lifecycle no-ops."""

    name: str = ""
    kind: str = ""  # "cpu" | "cuda" | "sim": for labels and results, never for branching

    @abstractmethod
    def register(self, key: UnitKey, nbytes: int, *, pinned: bool) -> None:
        ...

    @abstractmethod
    def place_unmanaged(self, key: UnitKey) -> None:
        ...

    @abstractmethod
    def h2d(self, key: UnitKey, *, pool: str | None = None) -> Transfer:
        ...

    @abstractmethod
    def wait(self, transfer: Transfer) -> Any:
        ...

    @abstractmethod
    def drop(self, key: UnitKey) -> None:
        ...

    @abstractmethod
    def d2h(self, key: UnitKey) -> Transfer:
        ...

    @abstractmethod
    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        ...

    @abstractmethod
    def free_pool(self, name: str) -> None:
        ...

    @abstractmethod
    def compute_begin(self, call: UnitCall) -> Any:
        ...

    @abstractmethod
    def compute_end(self, call: UnitCall) -> Any:
        ...

    @abstractmethod
    def used_bytes(self) -> int:
        ...

    @abstractmethod
    def free_bytes(self) -> int:
        ...

    def working_bytes(self, call: UnitCall) -> int:
        """Device bytes `call` needs while it runs beside the resident weights: its recorded
        activations (a simulated device adds the kernels' measured workspaces)."""
        return call.activation_bytes

    @abstractmethod
    def peak_bytes(self) -> int:
        ...

    @abstractmethod
    def pinned_bytes(self) -> int:
        ...

    @abstractmethod
    def now(self) -> Any:
        ...

    @abstractmethod
    def resolve(self, token: Any) -> float:
        ...

    @abstractmethod
    def on_device(self, key: UnitKey) -> bool:
        ...

    def merge(self, merge: MergeCall, apply: Callable[[], None]) -> tuple[Any, Any]:
        """Run `apply`, which changes device copies in place with torch ops on the current
        (compute) stream; returns the time tokens around it. Devices that move real tensors
        keep this; the simulator prices the merge instead."""
        start = self.now()
        apply()
        return start, self.now()

    # -- lifecycle: no-ops unless a device has something to do --------------------------------
    def begin_setup(self) -> None:  # noqa: B027 - a no-op default (see the module docstring)
        """Before the loads that precede the first request."""

    def end_setup(self) -> None:  # noqa: B027 - a no-op default
        """After them (a real card prepares the host copies the request will stream from)."""

    @abstractmethod
    def clock_s(self) -> float:
        """Seconds on this device's clock, all issued work finished."""

    def compute_busy_s(self) -> float | None:
        """Seconds the compute stream was busy, when known without a trace."""
        return None

    def peak_reserved_bytes(self) -> int | None:
        """Peak bytes the device's allocator held (None: no allocator beside the ledger)."""
        return None

    @abstractmethod
    def capacity_bytes(self) -> int:
        """Device bytes a run may fill (the budget; the simulator's net of fragmentation)."""

    def ledger_peak_bytes(self) -> int:
        """Peak of the program-order ledger (weights, pools, and activations where modelled)."""
        return self.peak_bytes()

    def close(self) -> None:  # noqa: B027 - a no-op default
        """Free every device copy and pool; the device is not used again."""


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
