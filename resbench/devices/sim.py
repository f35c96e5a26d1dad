"""`SimDevice`: a discrete-event model of one GPU — a compute stream, copy engines, a ledger.

Clocks (seconds of virtual time):

* the compute stream runs unit calls back to back; a call starts when the previous one
  ended and every transfer it waits on has landed;
* H2D and D2H copies run on copy engines (one shared engine unless the profile says the
  card copies both ways at once); a copy starts when its engine is free and the host has
  issued it. The host is modelled in lockstep with the compute stream: a copy issued while
  the manager prepares call *i* cannot start before call *i* could (the CUDA device orders
  staging-buffer reuse with events, which this reproduces);
* a pageable copy blocks the host, so compute issued after it waits for it too;
* a unit's H2D starts after any D2H of it has finished writing its host copy;
* an adapter merge (`merge`) first copies the adapter's factors in on the H2D engine (from
  pinned memory), then runs on the compute stream for `merge_times_s[merge.index]`, holding
  the factors and its largest product (`work_bytes`) in the ledger while it runs.

Memory is the same program-order ledger as the CPU device, against the budget: weights
(rounded up to the allocator's block size), staging pools, request state and each call's
activation peak while it runs. A plan that does not fit raises `DoesNotFitError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from resbench.devices.base import Device, Ledger, Transfer, UnitKey
from resbench.errors import DoesNotFitError
from resbench.hardware import HardwareProfile
from resbench.schedule import MergeCall, UnitCall


class SimDevice(Device):
    name = "sim"
    kind = "sim"

    def __init__(self, profile: HardwareProfile, *, unit_bytes: dict[UnitKey, int],
                 call_times_s: Sequence[float], capacity_bytes: int | None = None,
                 state_bytes: int = 0, merge_times_s: Sequence[float] = ()) -> None:
        self.profile = profile
        self._merge_times = merge_times_s
        self._host_ready: dict[UnitKey, float] = {}  # unit → end of the D2H writing its host copy
        capacity = profile.usable_bytes if capacity_bytes is None else capacity_bytes
        capacity = int(capacity * (1.0 - profile.fragmentation_fraction))
        self.ledger = Ledger(capacity, reserved_bytes=state_bytes)
        rounding = max(1, profile.allocator_rounding_bytes)
        self._bytes = {k: -(-n // rounding) * rounding for k, n in unit_bytes.items()}
        self._raw_bytes = unit_bytes
        self._call_times = call_times_s
        self._pinned: dict[UnitKey, bool] = {}
        self._pinned_total = 0
        self.compute_t = 0.0
        self.h2d_free_t = 0.0
        self.d2h_free_t = 0.0
        self.busy_compute_s = 0.0
        self.h2d_busy_s = 0.0
        self._slowdown = profile.copy_compute_slowdown
        self._duplex = profile.duplex_copies and profile.copy_engines >= 2
        self._latency = profile.transfer_latency_s
        self._bw = {(d, p): profile.bandwidth_bytes_per_s(d, p)
                    for d in ("h2d", "d2h") for p in (True, False)}
        # per unit, what an H2D copy of it costs: (seconds, stream, bytes); units count as
        # pinned until registered otherwise
        self._h2d: dict[UnitKey, tuple[float, str, int]] = {k: self._h2d_of(k) for k in unit_bytes}

    # -- host ------------------------------------------------------------------------------------
    def register(self, key: UnitKey, nbytes: int, *, pinned: bool) -> None:
        if self._pinned.get(key):
            self._pinned_total -= self._raw_bytes[key]
        self._pinned[key] = pinned
        if pinned:
            self._pinned_total += self._raw_bytes[key]
        self._h2d[key] = self._h2d_of(key)

    def pinned_bytes(self) -> int:
        return self._pinned_total

    def place_unmanaged(self, key: UnitKey) -> None:
        self.ledger.place(key, self._bytes[key], None)

    # -- copies ----------------------------------------------------------------------------------
    def _copy_time(self, key: UnitKey, direction: str) -> float:
        pinned = self._pinned.get(key, True)
        return self._latency + self._raw_bytes[key] / self._bw[(direction, pinned)]

    def _h2d_of(self, key: UnitKey) -> tuple[float, str, int]:
        stream = "h2d" if self._pinned.get(key, True) else "compute"
        return self._copy_time(key, "h2d"), stream, self._raw_bytes[key]

    def h2d(self, key: UnitKey, *, pool: str | None = None) -> Transfer:
        seconds, stream, nbytes = self._h2d[key]
        self.ledger.place(key, self._bytes[key], pool)
        start = self.h2d_free_t if self.h2d_free_t > self.compute_t else self.compute_t
        if self._host_ready:
            start = max(start, self._host_ready.pop(key, 0.0))
        end = start + seconds
        self.h2d_free_t = end
        if not self._duplex:
            self.d2h_free_t = end
        self.h2d_busy_s += end - start
        if stream == "compute":
            self.compute_t = end  # pageable: the host thread blocks until the copy is done
        return Transfer(key, nbytes, start, end, "h2d", stream)

    def wait(self, transfer: Transfer) -> Any:
        at = self.compute_t
        if transfer.end > self.compute_t:
            self.compute_t = transfer.end
        return at

    def drop(self, key: UnitKey) -> None:
        self.ledger.remove(key, self._bytes[key])

    def d2h(self, key: UnitKey) -> Transfer:
        start = max(self.d2h_free_t, self.compute_t)
        end = start + self._copy_time(key, "d2h")
        self.d2h_free_t = end
        if not self._duplex:
            self.h2d_free_t = end
        self._host_ready[key] = end
        self.ledger.remove(key, self._bytes[key])
        return Transfer(key, self._raw_bytes[key], start, end, "d2h", "d2h")

    def merge(self, merge: MergeCall, apply: Callable[[], None]) -> tuple[Any, Any]:
        apply()
        at = self.compute_t
        ready = at
        if merge.adapter_bytes:
            start = max(self.h2d_free_t, at)
            ready = start + self._latency + merge.adapter_bytes / self._bw[("h2d", True)]
            self.h2d_free_t = ready
            if not self._duplex:
                self.d2h_free_t = ready
            self.h2d_busy_s += ready - start
        working = merge.adapter_bytes + merge.work_bytes
        self.ledger.charge(working, (merge.component, merge.adapter),
                           f"merge of {merge.adapter} into {merge.component}")
        seconds = self._merge_times[merge.index]
        self.compute_t = max(at, ready) + seconds
        self.busy_compute_s += seconds
        self.ledger.credit(working)
        return at, self.compute_t

    def on_device(self, key: UnitKey) -> bool:
        return key in self.ledger.where

    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        rounding = max(1, self.profile.allocator_rounding_bytes)
        self.ledger.alloc_pool(name, -(-slot_bytes // rounding) * rounding, slots)

    def free_pool(self, name: str) -> None:
        self.ledger.free_pool(name)

    # -- compute ---------------------------------------------------------------------------------
    def working_bytes(self, call: UnitCall) -> int:
        """Recorded activations plus the workspaces the profile measured and a meta
        recording cannot see: cuDNN's on calls with convolution work, and SDPA's on calls
        with attention and convolution work (a VAE's wide-head attention blocks), each in
        the convolutions' precision (fp32: the Wan VAE; bf16: FLUX's)."""
        p = self.profile
        if call.conv_fp32_flops > 0:
            ws, per_flop = p.conv_fp32_workspace_bytes, p.attention_fp32_workspace_bytes_per_flop
        elif call.conv_flops > 0:
            ws, per_flop = p.conv_workspace_bytes, p.attention_workspace_bytes_per_flop
        else:
            return call.activation_bytes
        return call.activation_bytes + ws + int(call.attention_flops * per_flop)

    def compute_begin(self, call: UnitCall) -> Any:
        working = self.working_bytes(call)
        if working:
            try:
                self.ledger.charge(working, None)
            except DoesNotFitError:
                # worded here, not up front: most calls fit, and this runs for every call
                raise self.ledger.does_not_fit(
                    working, (call.component, call.unit),
                    f"activations of {call.component}.{call.unit}") from None
        start = self.compute_t
        duration = self._call_times[call.index]
        if self._slowdown and self.h2d_free_t > start:
            duration *= 1.0 + self._slowdown
        self.compute_t = start + duration
        self.busy_compute_s += duration
        return start

    def compute_end(self, call: UnitCall) -> Any:
        working = self.working_bytes(call)
        if working:
            self.ledger.credit(working)
        return self.compute_t

    # -- ledger and clock ------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return self.ledger.used

    def free_bytes(self) -> int:
        return self.ledger.capacity_bytes - self.ledger.used

    def peak_bytes(self) -> int:
        return self.ledger.peak

    def now(self) -> float:
        return self.compute_t

    def resolve(self, token: Any) -> float:
        return float(token)

    def capacity_bytes(self) -> int:
        return self.ledger.capacity_bytes

    def end_setup(self) -> None:
        """Setup ends when its copies have landed (a snapshot's copies back included): the
        request starts on idle copy engines, as it does after setup on a real card."""
        self.compute_t = max(self.compute_t, self.h2d_free_t, self.d2h_free_t)

    def clock_s(self) -> float:
        return self.compute_t

    def compute_busy_s(self) -> float | None:
        return self.busy_compute_s
