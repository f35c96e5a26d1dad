"""Fixtures shared by tests in several folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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


RunMain = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> RunMain:
    """`resbench ARGS` run by the entry point, `resbench.cli.main`, in this process (the same
    parsing, work and error mapping as from the shell, without an interpreter start-up):
    a function of the arguments that returns (exit code, stdout, stderr) of that call."""
    from resbench.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return int(exit_.value.code or 0), out, err

    return run
