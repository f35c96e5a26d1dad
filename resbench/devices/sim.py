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

When the profile sets `allocator_large_buffer_bytes`, the same allocations also go through a
model of the CUDA caching allocator (`resbench.devices.allocator`) on the streams the CUDA
device uses for them: a unit copied from pinned memory lands in a block of the H2D stream
that the compute stream reads (`record_stream`: freed, it stays reserved until compute has
passed the drop), a staging pool in blocks of the compute stream that the H2D stream writes,
a copy back holds its block until the D2H copy ends; activations, request state and merges
are compute-stream blocks (a call's activations are many tensors: they fill cached free blocks
before a new segment, `CachingAllocator.malloc_many`). The host runs one call ahead of the compute stream: between a
call's start and the next call's start it issues work at the call's start time, so a block
dropped after a call is reusable from the next call on. Fit / no-fit is then decided on
*reserved* bytes against the budget itself (the fragmentation share is not taken off: the
model is the fragmentation), and `peak_reserved_bytes` reports the modelled reserve. The
profile's `library_workspace_bytes` (cuBLAS's workspace, held for the whole process) counts
from the start in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from resbench.devices.allocator import AllocatorOOM, Block, CachingAllocator
from resbench.devices.base import Device, Ledger, Transfer, UnitKey
from resbench.errors import DoesNotFitError
from resbench.hardware import HardwareProfile
from resbench.schedule import MergeCall, UnitCall
from resbench.units import format_bytes


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
        self.allocator: CachingAllocator | None = None
        self._blocks: dict[Any, Block | list[Block]] = {}  # unit key / (pool, slot) / "state" → its block
        self._block_stream: dict[Any, str] = {}
        self._host_t = 0.0  # when the host issues work (a call ahead of the compute stream)
        self._in_setup = False
        self.compute_t = 0.0
        self.h2d_free_t = 0.0
        self.d2h_free_t = 0.0
        self.sync_wait_s = 0.0
        """Seconds the host waited in allocator synchronisations at the cap (all streams)."""
        if profile.allocator_large_buffer_bytes:
            self.allocator = CachingAllocator(
                capacity, small_segment_bytes=max(1, profile.allocator_rounding_bytes),
                large_buffer_bytes=profile.allocator_large_buffer_bytes)
        else:
            capacity = int(capacity * (1.0 - profile.fragmentation_fraction))
        library = profile.library_workspace_bytes
        # With the allocator modelled, it alone decides fit (on reserved bytes): the ledger,
        # whose weights are rounded up to 2 MiB each, keeps counting but refuses nothing.
        self._cap = capacity
        self.ledger = Ledger(capacity if self.allocator is None else 1 << 62,
                             reserved_bytes=state_bytes + library)
        if self.allocator is not None and library:
            self._malloc("library", library, "compute", "cuBLAS workspace")
        if self.allocator is not None and state_bytes:
            self._malloc("state", state_bytes, "compute", "request state")
        rounding = max(1, profile.allocator_rounding_bytes)
        self._bytes = {k: -(-n // rounding) * rounding for k, n in unit_bytes.items()}
        self._raw_bytes = unit_bytes
        self._call_times = call_times_s
        self._pinned: dict[UnitKey, bool] = {}
        self._pinned_total = 0
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
        if self.allocator is not None:
            self._malloc(key, self._raw_bytes[key], "compute", f"{key[0]}.{key[1]}")

    # -- the caching allocator (when modelled) ----------------------------------------------------
    def _malloc(self, handle: Any, nbytes: int, stream: str, what: str, *,
                many: bool = False) -> None:
        """Allocate `handle`'s block (`many`: a call's tensors, `malloc_many`)."""
        assert self.allocator is not None
        syncs = self.allocator.syncs
        try:
            if many:
                self._blocks[handle] = self.allocator.malloc_many(nbytes, stream, self._host_t)
            else:
                self._blocks[handle] = self.allocator.malloc(nbytes, stream, self._host_t)
        except AllocatorOOM as oom:
            a = self.allocator
            missing = oom.reserved_bytes + a.segment_bytes(oom.nbytes) - oom.cap_bytes
            comp, unit = handle if isinstance(handle, tuple) and len(handle) == 2 \
                and isinstance(handle[1], str) else (what, "")
            raise DoesNotFitError(
                f"{what} needs {format_bytes(nbytes)} but the caching allocator holds "
                f"{format_bytes(oom.reserved_bytes)} reserved ({format_bytes(a.allocated_bytes)} "
                f"allocated) of the {format_bytes(oom.cap_bytes)} budget and no cached block "
                f"of its stream fits ({format_bytes(missing)} missing)",
                component=comp or None, unit=unit or None, missing_bytes=missing) from None
        self._block_stream[handle] = stream
        if self.allocator.syncs != syncs:
            self._device_sync()

    def _device_sync(self) -> None:
        """The host waits for every stream (the allocator synchronised at the cap): nothing
        issued after starts before the work in flight ends — a copy back holding memory
        delays the loads that need it."""
        t = max(self.compute_t, self.h2d_free_t, self.d2h_free_t, self._host_t)
        self.sync_wait_s += t - max(self._host_t, 0.0)
        self.compute_t = self.h2d_free_t = self.d2h_free_t = self._host_t = t

    def _free(self, handle: Any, ready_s: float | None = None) -> None:
        """Free `handle`'s block; `ready_s`: the other stream that used it is past it then."""
        if self.allocator is None:
            return
        self._block_stream.pop(handle)
        blocks = self._blocks.pop(handle)
        for b in blocks if isinstance(blocks, list) else (blocks,):
            self.allocator.free(b, ready_s=ready_s)

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
        if self.allocator is not None and pool is None:
            # the CUDA device allocates on the stream that copies: H2D from pinned memory
            # (setup always reads the pinned slab), the compute stream for a pageable copy
            on = "h2d" if stream == "h2d" or self._in_setup else "compute"
            self._malloc(key, nbytes, on, f"{key[0]}.{key[1]}")
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
            self._host_t = max(self._host_t, end)
        return Transfer(key, nbytes, start, end, "h2d", stream)

    def wait(self, transfer: Transfer) -> Any:
        at = self.compute_t
        if transfer.end > self.compute_t:
            self.compute_t = transfer.end
        return at

    def drop(self, key: UnitKey) -> None:
        self.ledger.remove(key, self._bytes[key])
        if key in self._blocks:
            # read by the compute stream (record_stream): reusable once compute is past now
            cross = self._block_stream[key] != "compute"
            self._free(key, self.compute_t if cross else None)

    def d2h(self, key: UnitKey) -> Transfer:
        start = max(self.d2h_free_t, self.compute_t)
        end = start + self._copy_time(key, "d2h")
        self.d2h_free_t = end
        if not self._duplex:
            self.h2d_free_t = end
        self._host_ready[key] = end
        self.ledger.remove(key, self._bytes[key])
        if key in self._blocks:  # the D2H stream reads it until the copy ends
            self._free(key, max(end, self.compute_t))
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
        what = f"merge of {merge.adapter} into {merge.component}"
        self.ledger.charge(working, (merge.component, merge.adapter), what)
        if self.allocator is not None and working:
            self._malloc("merge", working, "compute", what, many=True)
        seconds = self._merge_times[merge.index]
        self.compute_t = max(at, ready) + seconds
        self.busy_compute_s += seconds
        self.ledger.credit(working)
        if "merge" in self._blocks:
            self._free("merge")
        return at, self.compute_t

    def on_device(self, key: UnitKey) -> bool:
        return key in self.ledger.where

    def alloc_pool(self, name: str, slot_bytes: int, slots: int) -> None:
        rounding = max(1, self.profile.allocator_rounding_bytes)
        self.ledger.alloc_pool(name, -(-slot_bytes // rounding) * rounding, slots)
        if self.allocator is not None:  # one compute-stream tensor per slot, as on the card
            for i in range(slots):
                self._malloc((name, i), slot_bytes, "compute", f"staging pool {name}")

    def free_pool(self, name: str) -> None:
        slots = len(self.ledger.pool_slots[name])
        self.ledger.free_pool(name)
        for i in range(slots):
            if (name, i) in self._blocks:  # written by the H2D stream: free once it is past
                self._free((name, i), self.h2d_free_t)

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
        start = self.compute_t
        self._host_t = start
        if working:
            try:
                self.ledger.charge(working, None)
            except DoesNotFitError:
                # worded here, not up front: most calls fit, and this runs for every call
                raise self.ledger.does_not_fit(
                    working, (call.component, call.unit),
                    f"activations of {call.component}.{call.unit}") from None
            if self.allocator is not None:
                self._malloc("working", working, "compute",
                             f"activations of {call.component}.{call.unit}", many=True)
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
            if "working" in self._blocks:
                self._free("working")
        return self.compute_t

    # -- ledger and clock ------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return self.ledger.used

    def free_bytes(self) -> int:
        return self._cap - self.ledger.used

    def peak_bytes(self) -> int:
        return self.ledger.peak

    def now(self) -> float:
        return self.compute_t

    def resolve(self, token: Any) -> float:
        return float(token)

    def capacity_bytes(self) -> int:
        return self._cap

    def peak_reserved_bytes(self) -> int | None:
        """Peak bytes the modelled caching allocator reserved (None: not modelled)."""
        return None if self.allocator is None else self.allocator.peak_reserved_bytes

    def begin_setup(self) -> None:
        self._in_setup = True

    def end_setup(self) -> None:
        """Setup ends when its copies have landed (a snapshot's copies back included): the
        request starts on idle copy engines, as it does after setup on a real card."""
        self._in_setup = False
        self.compute_t = max(self.compute_t, self.h2d_free_t, self.d2h_free_t)
        self._host_t = self.compute_t

    def clock_s(self) -> float:
        self._host_t = max(self._host_t, self.compute_t)  # the host waits for the device
        return self.compute_t

    def compute_busy_s(self) -> float | None:
        return self.busy_compute_s
