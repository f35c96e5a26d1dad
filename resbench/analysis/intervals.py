"""Interval arithmetic on spans in seconds (vectorised with numpy).

A *cover* is the union of a set of spans, as sorted, disjoint (starts, ends) arrays. Its
measure up to a time `x` (`covered_until`) turns every "how much of this span or window is
covered" question into two lookups.
"""

from __future__ import annotations

import numpy as np


def cover(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of spans [start, end) as sorted disjoint arrays; empty spans are dropped."""
    s = np.asarray(starts, dtype=float)
    e = np.asarray(ends, dtype=float)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    # a new piece starts where a span begins after everything before it has ended
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    piece = np.cumsum(new) - 1
    out_s = s[new]
    out_e = np.zeros(out_s.size)
    np.maximum.at(out_e, piece, e)
    return out_s, out_e


def covered_until(c: tuple[np.ndarray, np.ndarray], x: np.ndarray | float) -> np.ndarray:
    """Measure of the cover ∩ (-inf, x], for each x."""
    s, e = c
    x = np.atleast_1d(np.asarray(x, dtype=float))
    if s.size == 0:
        return np.zeros(x.shape)
    before = np.concatenate([[0.0], np.cumsum(e - s)])
    i = np.searchsorted(s, x, side="right") - 1
    out = np.where(i >= 0, before[np.maximum(i, 0)], 0.0)
    inside = np.where(i >= 0, np.clip(x - s[np.maximum(i, 0)], 0.0, (e - s)[np.maximum(i, 0)]), 0.0)
    return out + inside


def covered(c: tuple[np.ndarray, np.ndarray], starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Measure of the cover inside each span [start, end)."""
    return covered_until(c, ends) - covered_until(c, starts)


def measure(c: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.sum(c[1] - c[0]))


def union(*covers: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return cover(np.concatenate([c[0] for c in covers]), np.concatenate([c[1] for c in covers]))
