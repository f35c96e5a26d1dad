"""Trace events: every residency decision and action, as rows.

Event kinds (the `kind` column):

==============  =====  ========================================================================
kind            span?  meaning
==============  =====  ========================================================================
request_start   no     the request begins (after one-time setup)
request_end     no
stage_enter     no     a pipeline stage starts (`stage`)
stage_exit      no
setup           yes    one-time loading of resident units before the request
prepare         no     a component is readied for its use (`reason`: cold | prefetched | kept)
prefetch        no     an asynchronous H2D is issued ahead of use (`bytes`)
prefetch_skip   no     a prefetch was considered and not issued (`reason`)
load            yes    an H2D transfer of one unit, on stream `h2d` (or `compute` if blocking)
wait            yes    compute waits for a transfer; `stall_s` is how long it was blocked
keep            no     a component stays on the device after its use (`reason`); with `unit`,
                       a layerwise resident block kept for the next request (`keep_resident`)
                       or found kept at a request's first use of its component
release         no     a unit's device copy is dropped (`reason`: after_use | evict | end |
                       d2h | snapshot: ...)
d2h             yes    a copy back to the host (`reason`: d2h, or `snapshot: <adapters>
                       merged` when weights changed on the device are captured)
merge           yes    an adapter merged into a component's device weights on the compute
                       stream (`unit`: the adapter; `bytes`: its factors; `flops`; `reason`:
                       first | re-merge | setup | snapshot)
merge_skip      no     a merge the device copy already holds (`reason`: host copy merged |
                       device copy merged)
evict           no     a kept component is released to make room (`reason`)
compute         yes    one unit call on the compute stream (`flops`)
memory          no     counter sample: `device_bytes`, `pinned_bytes` after a change
==============  =====  ========================================================================

Times are seconds from the start of the run (`t_s`, and `end_s` for spans). While a run is
in flight the tracer may hold device time *tokens* (e.g. CUDA events) instead of floats;
`finalize(resolve)` turns them into seconds once. Rows are tuples for speed (the simulator
writes tens of thousands per plan); `frame()` builds the DataFrame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

SCHEMA = 1
COLUMNS = (
    "kind", "t_s", "end_s", "component", "unit", "stage", "step", "stream", "bytes",
    "reason", "stall_s", "flops", "device_bytes", "pinned_bytes",
)
SPAN_KINDS = frozenset({"setup", "load", "wait", "d2h", "compute", "merge"})
KINDS = frozenset({
    "request_start", "request_end", "stage_enter", "stage_exit", "setup", "prepare", "prefetch",
    "prefetch_skip", "load", "wait", "keep", "release", "d2h", "evict", "compute", "memory",
    "merge", "merge_skip",
})


class Tracer:
    """Collects events. `enabled=False` keeps only memory peaks and totals (fast tuning)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.rows: list[list[Any]] = []
        self.stage = ""
        self.step = -1
        self.meta: dict[str, Any] = {"schema": SCHEMA}

    def event(
        self,
        kind: str,
        t: Any,
        *,
        end: Any = None,
        component: str = "",
        unit: str = "",
        stream: str = "host",
        nbytes: int = 0,
        reason: str = "",
        stall: Any = 0.0,
        flops: int = 0,
    ) -> None:
        if self.enabled:
            self.rows.append([kind, t, end, component, unit, self.stage, self.step, stream,
                              nbytes, reason, stall, flops, 0, 0])

    def memory(self, t: Any, device_bytes: int, pinned_bytes: int) -> None:
        if self.enabled:
            self.rows.append(["memory", t, None, "", "", self.stage, self.step, "host", 0, "",
                              0.0, 0, device_bytes, pinned_bytes])

    def finalize(self, resolve: Callable[[Any], float]) -> None:
        """Replace time tokens with seconds; a wait's stall is resolved from its transfer end."""
        for row in self.rows:
            row[1] = resolve(row[1])
            if row[2] is not None:
                row[2] = resolve(row[2])
            if row[0] == "wait":
                # stall token = the transfer's end; blocked time is how far it ran past the wait
                ready = resolve(row[10]) if row[10] is not None else row[1]
                row[10] = max(0.0, ready - row[1])
                row[2] = max(row[1], ready)

    def frame(self) -> pd.DataFrame:
        """All events as a DataFrame with `COLUMNS`; span rows have `end_s`, others NaN."""
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        frame["end_s"] = pd.to_numeric(frame["end_s"], errors="coerce")
        frame["t_s"] = frame["t_s"].astype(float)
        frame["stall_s"] = frame["stall_s"].astype(float)
        return frame


def to_parquet(frame: pd.DataFrame, path: str, meta: dict[str, Any] | None = None) -> None:
    """Write events to Parquet (needs pyarrow); `meta` goes into the file's key-value metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"resbench": json.dumps(meta, default=str).encode()})
    pq.write_table(table, path)
