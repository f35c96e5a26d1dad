"""The physical lower bound of a row of `benchmarks/engines.py`, from its cell's reference
row (no offload on the whole card): max(compute, DiT forwards × the DiT bytes that do not fit
beside the activations ÷ the pinned H2D rate). Used by the benchmark as it writes a run and by
the report for a run that had no reference row of its own (`--rows`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

H2D_PINNED_BYTES_PER_S = 55.1e9
"""The H200's pinned host-to-device rate (`benchmarks/results/h200-calibrated.toml`)."""


def lower_bound(reference: Mapping[str, Any], row: Mapping[str, Any],
                h2d_bytes_per_s: float = H2D_PINNED_BYTES_PER_S) -> dict[str, Any] | None:
    """The bound fields of `row` (`compute_s`, `activation_bytes`, `must_move_bytes`,
    `transfer_bound_s`, `lower_bound_s`), or None for a row without a byte budget (the
    whole card). `reference`: the cell's measured no-offload row (its latency is the compute
    time, its allocated peak above the weights the activations); `row` carries the cell's
    `dit_bytes` and `dit_forwards`."""
    budget = row.get("budget_bytes")
    if not isinstance(budget, int | float) or isinstance(budget, bool) or budget != budget:
        return None  # the whole card (None, or NaN in a merged frame)
    budget = int(budget)
    compute = float(reference["latency_s"])
    weights = int(reference["weights_bytes"])
    activations = max(0, int(reference.get("peak_allocated_bytes") or weights) - weights)
    room = max(0, budget - activations)
    moved = int(row["dit_forwards"]) * max(0, int(row["dit_bytes"]) - room)
    transfer = moved / h2d_bytes_per_s
    return {"compute_s": compute, "activation_bytes": activations, "must_move_bytes": moved,
            "transfer_bound_s": transfer, "lower_bound_s": max(compute, transfer)}
