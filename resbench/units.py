"""Byte sizes at the edges: parse `48GB` / `48GiB` strictly, format for humans.

Inside resbench every size is an `int` of bytes. SI suffixes are powers of 1000
(`48GB` = 48e9 B), IEC suffixes powers of 1024 (`48GiB` = 48 * 2**30 B); `G` alone is SI,
`Gi` IEC, as in Kubernetes quantities. A bare number is bytes.
"""

from __future__ import annotations

import math
import re

from resbench.errors import InputError

_SI = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
       "T": 10**12, "TB": 10**12}
_IEC = {"KI": 2**10, "KIB": 2**10, "MI": 2**20, "MIB": 2**20, "GI": 2**30, "GIB": 2**30,
        "TI": 2**40, "TIB": 2**40}
_FACTORS = {**_SI, **_IEC}
_SIZE_RE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(text: str | int | float, *, what: str = "size", allow_zero: bool = False) -> int:
    """Parse a size such as `48GB`, `48 GiB`, `1.5GiB`, `48e9` or `1024` into bytes.

    Raises `InputError` naming `what` and the accepted forms when the text is not a size,
    is not finite (`1e400`), is negative, or is zero (unless `allow_zero`).
    """
    if isinstance(text, bool):
        raise InputError(f"{what}: expected a size such as 48GB or 44.7GiB, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
        factor = 1
    else:
        match = _SIZE_RE.match(str(text))
        suffix = match.group(2).upper() if match else ""
        if not match or suffix not in _FACTORS:
            raise InputError(
                f"{what}: cannot read {text!r} as a size; use a number with an optional unit "
                f"(B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), "
                f"e.g. 48GB or 44.7GiB"
            )
        value = float(match.group(1))
        factor = _FACTORS[suffix]
    if not math.isfinite(value):
        raise InputError(f"{what}: {text!r} is not a finite size; use e.g. 48GB or 44.7GiB")
    if value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{what}: must be {'≥' if allow_zero else '>'} 0, got {text!r}")
    return int(round(value * factor))


def format_bytes(n: int | float, *, binary: bool = False, digits: int = 2) -> str:
    """`48_000_000_000` → `48.00 GB` (SI), or `44.70 GiB` with `binary=True`."""
    base = 1024.0 if binary else 1000.0
    units = ["B", "KiB", "MiB", "GiB", "TiB"] if binary else ["B", "KB", "MB", "GB", "TB"]
    value = float(n)
    for unit in units:
        if abs(value) < base or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.{digits}f} {unit}"
        value /= base
    raise AssertionError("unreachable")


def describe_bytes(n: int) -> str:
    """Both readings, for echoing a parsed budget: `48.00 GB = 44.70 GiB = 48,000,000,000 B`."""
    return f"{format_bytes(n)} = {format_bytes(n, binary=True)} = {n:,} B"
