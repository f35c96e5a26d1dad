from __future__ import annotations

import pytest

from resbench.errors import InputError
from resbench.units import describe_bytes, format_bytes, parse_bytes


@pytest.mark.parametrize("text, expected", [
    ("48GB", 48 * 10**9), ("48 GB", 48 * 10**9), ("48gb", 48 * 10**9), ("48G", 48 * 10**9),
    ("48GiB", 48 * 2**30), ("48 gib", 48 * 2**30), ("48Gi", 48 * 2**30), ("1.5GiB", 3 * 2**29),
    ("48e9", 48 * 10**9), ("1024", 1024), ("512MiB", 512 * 2**20), (4096, 4096),
])
def test_sizes_parse_si_and_iec_exactly(text, expected) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "abc", "48XB", "GB", "", "48 G B", True])
def test_bad_sizes_are_rejected_with_the_accepted_forms(text) -> None:
    with pytest.raises(InputError) as err:
        parse_bytes(text, what="budget")
    assert "budget" in str(err.value)


def test_zero_allowed_when_asked() -> None:
    assert parse_bytes("0", allow_zero=True) == 0


def test_formatting() -> None:
    assert format_bytes(48 * 10**9) == "48.00 GB"
    assert format_bytes(48 * 2**30, binary=True) == "48.00 GiB"
    assert describe_bytes(48 * 10**9) == "48.00 GB = 44.70 GiB = 48,000,000,000 B"
