"""A block-level model of PyTorch's CUDA caching allocator, for the simulated device.

What it models (PyTorch `c10/cuda/CUDACachingAllocator.cpp`, expandable segments off, no
`max_split_size`), so that the simulator predicts *reserved* bytes and decides fit / no-fit
the way the card does — on reserved bytes against the cap `set_per_process_memory_fraction`
sets (the budget):

* sizes round up to 512 B; a request of at most 1 MiB comes from the *small* pool, whose
  segments are 2 MiB (`small_segment_bytes`); a larger one from the *large* pool, whose new
  segment is 20 MiB (`large_buffer_bytes`) below 10 MiB, else the size rounded up to 2 MiB;
* free blocks are cached per (stream, pool): an allocation reuses the smallest free block of
  its own stream and pool that is large enough (best fit; ties: oldest segment, lowest
  offset) and splits it when the remainder is ≥ 512 B (small) or > 1 MiB (large); freed
  neighbours in a segment coalesce;
* a block used by another stream (`record_stream`) is not reusable when freed: its memory
  stays reserved until that stream passes the event recorded at the free (`ready_s`), which
  the allocator notices at a later allocation made at or after that time (`now_s`);
  `allocated` drops at the free, `reserved` does not;
* when no cached block fits and a new segment would pass the cap, it releases whole free
  segments of the request's pool, largest first, then synchronises (every pending block
  becomes free) and releases every whole free segment, then tries once more; a request that
  still does not fit raises `AllocatorOOM` (the card's `OutOfMemoryError`). Both steps wait
  for the device (event synchronisation, `cudaFree`): `syncs` counts them, and the simulated
  device makes the host, and so every stream, wait for the work in flight.

Not modelled: the order of `cudaMalloc` failures when the card itself is full (the cap is
the budget), garbage-collection thresholds, expandable segments, graph pools.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MIN_BLOCK_BYTES = 512
SMALL_SIZE_BYTES = 1 << 20
MIN_LARGE_ALLOC_BYTES = 10 << 20


class AllocatorOOM(Exception):  # noqa: N818 - the card's OutOfMemoryError, modelled
    """A request the modelled allocator cannot place under the cap."""

    def __init__(self, nbytes: int, reserved_bytes: int, cap_bytes: int) -> None:
        super().__init__(nbytes, reserved_bytes, cap_bytes)
        self.nbytes, self.reserved_bytes, self.cap_bytes = nbytes, reserved_bytes, cap_bytes


@dataclass(slots=True, eq=False)
class Block:
    segment: Segment
    offset: int
    size: int
    free: bool = True
    ready_s: float | None = None
    """Freed while another stream used it: reusable once that stream is past this time."""


@dataclass(slots=True, eq=False)
class Segment:
    order: int
    size: int
    stream: str
    small: bool
    blocks: list[Block] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return len(self.blocks) == 1 and self.blocks[0].free and self.blocks[0].ready_s is None


def round_size(nbytes: int) -> int:
    """A request's block size: at least 512 B, a multiple of 512 B."""
    return max(MIN_BLOCK_BYTES, -(-nbytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES)


def _fit_key(block: Block) -> tuple[int, int, int]:
    return block.size, block.segment.order, block.offset


class CachingAllocator:
    """Segments and blocks of one device, per stream; see the module docstring."""

    def __init__(self, cap_bytes: int, *, small_segment_bytes: int = 2 << 20,
                 large_buffer_bytes: int = 20 << 20) -> None:
        self.cap_bytes = cap_bytes
        self.small_segment_bytes = small_segment_bytes
        self.large_buffer_bytes = large_buffer_bytes
        self.segments: list[Segment] = []
        self.pending: list[Block] = []
        self._free: dict[tuple[str, bool], set[Block]] = {}  # (stream, small) → reusable blocks
        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self._order = 0
        self.syncs = 0
        """Times an allocation at the cap synchronised the device (waited for the events of
        blocks other streams still used, or gave segments back: `cudaFree` synchronises)."""

    def segment_bytes(self, size: int) -> int:
        """Bytes of the segment a new `size`-byte block (rounded) gets."""
        if size <= SMALL_SIZE_BYTES:
            return self.small_segment_bytes
        if size < MIN_LARGE_ALLOC_BYTES:
            return self.large_buffer_bytes
        rounding = self.small_segment_bytes
        return -(-size // rounding) * rounding

    # -- allocation ------------------------------------------------------------------------
    def malloc(self, nbytes: int, stream: str, now_s: float) -> Block:
        """A block of at least `nbytes` on `stream` at host time `now_s`."""
        size = round_size(nbytes)
        small = size <= SMALL_SIZE_BYTES
        self._process_events(now_s)
        block = self._find(size, stream, small)
        if block is None:
            seg = self.segment_bytes(size)
            if self.reserved_bytes + seg > self.cap_bytes:
                self._release(seg, small, only_pool=True)
            if self.reserved_bytes + seg > self.cap_bytes:
                self._synchronize()
                self._release(seg, small, only_pool=False)
            if self.reserved_bytes + seg > self.cap_bytes:
                raise AllocatorOOM(size, self.reserved_bytes, self.cap_bytes)
            block = self._new_segment(seg, stream, small)
        self._take(block)
        self._split(block, size, small)
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return block

    def malloc_many(self, nbytes: int, stream: str, now_s: float) -> list[Block]:
        """`nbytes` of many tensors at once (a call's activations): they fill cached free
        blocks of `stream` first — the smallest one that holds the rest, else the largest,
        split — and only what is left takes a new segment. A recorded call knows its peak
        working bytes, not its tensors; each tensor would be placed this way."""
        size = round_size(nbytes)
        if size <= SMALL_SIZE_BYTES:
            return [self.malloc(nbytes, stream, now_s)]
        self._process_events(now_s)
        out: list[Block] = []
        rest = size
        free = sorted(self._free.get((stream, False), ()), key=_fit_key)
        while rest > SMALL_SIZE_BYTES and free:
            i = bisect.bisect_left(free, rest, key=lambda b: b.size)
            block = free[i] if i < len(free) else free.pop()
            self._take(block)
            self._split(block, min(block.size, rest), False)
            self.allocated_bytes += block.size
            rest -= block.size
            out.append(block)
            if i < len(free):
                break
        if rest > 0:
            try:
                out.append(self.malloc(rest, stream, now_s))
            except AllocatorOOM as oom:
                for b in out:
                    self.free(b)
                raise AllocatorOOM(size, oom.reserved_bytes, oom.cap_bytes) from None
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return out

    def free(self, block: Block, *, ready_s: float | None = None) -> None:
        """Free `block`; `ready_s`: another stream used it and is past it only at that time
        (the block's memory stays reserved and unusable until an allocation sees it)."""
        self.allocated_bytes -= block.size
        block.free = True
        if ready_s is not None:
            block.ready_s = ready_s
            self.pending.append(block)
            return
        self._coalesce(block)

    # -- internals -------------------------------------------------------------------------
    def _process_events(self, now_s: float) -> None:
        if not self.pending:
            return
        still = []
        for b in self.pending:
            if b.ready_s is not None and b.ready_s <= now_s:
                b.ready_s = None
                self._coalesce(b)
            else:
                still.append(b)
        self.pending = still

    def _synchronize(self) -> None:
        if self.pending:
            self.syncs += 1
        for b in self.pending:
            b.ready_s = None
            self._coalesce(b)
        self.pending = []

    def _find(self, size: int, stream: str, small: bool) -> Block | None:
        """The smallest reusable block of (stream, pool) that holds `size` (ties: oldest
        segment, lowest offset)."""
        fits = [b for b in self._free.get((stream, small), ()) if b.size >= size]
        return min(fits, key=_fit_key) if fits else None

    def _index(self, block: Block) -> None:
        seg = block.segment
        self._free.setdefault((seg.stream, seg.small), set()).add(block)

    def _take(self, block: Block) -> None:
        """`block` leaves the reusable set (it is being allocated)."""
        seg = block.segment
        self._free[(seg.stream, seg.small)].discard(block)
        block.free = False

    def _new_segment(self, nbytes: int, stream: str, small: bool) -> Block:
        seg = Segment(self._order, nbytes, stream, small)
        self._order += 1
        block = Block(seg, 0, nbytes)
        seg.blocks.append(block)
        self._index(block)
        self.segments.append(seg)
        self.reserved_bytes += nbytes
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _split(self, block: Block, size: int, small: bool) -> None:
        rest = block.size - size
        if rest >= MIN_BLOCK_BYTES if small else rest > SMALL_SIZE_BYTES:
            seg = block.segment
            i = seg.blocks.index(block)
            remainder = Block(seg, block.offset + size, rest)
            seg.blocks.insert(i + 1, remainder)
            block.size = size
            self._index(remainder)

    def _coalesce(self, block: Block) -> None:
        seg = block.segment
        reusable = self._free.setdefault((seg.stream, seg.small), set())
        blocks = seg.blocks
        i = blocks.index(block)
        if i + 1 < len(blocks) and blocks[i + 1].free and blocks[i + 1].ready_s is None:
            nxt = blocks.pop(i + 1)
            reusable.discard(nxt)
            block.size += nxt.size
        if i > 0 and blocks[i - 1].free and blocks[i - 1].ready_s is None:
            blocks[i - 1].size += blocks.pop(i).size
            return  # the previous block, already reusable, absorbed this one
        reusable.add(block)

    def _release(self, needed: int, small: bool, *, only_pool: bool) -> None:
        """Give whole free segments back (largest first) until `needed` more fit the cap."""
        idle = sorted((s for s in self.segments if s.idle and (s.small == small or not only_pool)),
                      key=lambda s: (-s.size, s.order))
        for seg in idle:
            if only_pool and self.reserved_bytes + needed <= self.cap_bytes:
                break
            self.segments.remove(seg)
            self._free[(seg.stream, seg.small)].discard(seg.blocks[0])
            self.reserved_bytes -= seg.size
            self.syncs += 1
