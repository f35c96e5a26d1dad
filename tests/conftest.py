"""Fixtures shared by tests in several folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    probe = folder / f".resbench-probe-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder no file can be created in: a read-only one, or for root (whom permissions
    do not stop) /sys, where the kernel refuses new files."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _writable(folder):
            yield folder
        elif Path("/sys").is_dir() and not _writable(Path("/sys")):
            yield Path("/sys")
        else:
            pytest.skip("no folder here refuses new files")
    finally:
        folder.chmod(0o755)
