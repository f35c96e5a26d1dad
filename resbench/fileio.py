"""Output files a reader can trust: written whole or not at all, in JSON any parser accepts.

* `atomic_path` / `atomic_write_bytes` / `atomic_write_text`: the content goes to a hidden
  temporary file in the destination's folder, which `os.replace` then puts in place. A
  crash or Ctrl-C leaves the old file or the new one, never half of one.
* `install_dir`: the same for a folder (a run) built under a temporary name.
* `plain_json` / `dumps_json`: strict JSON (RFC 8259): NaN and ±inf become null; numpy
  scalars, DataFrames, paths and dataclasses become plain values.
* `check_output_file` / `check_output_dir`: whether a path can be written, asked before any
  long work starts, so a typo costs seconds rather than a finished tuning run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resbench.errors import InputError

PARTIAL = ".partial"
"""Marks a temporary file or folder: `.NAME.<pid>-<token>.partial…` beside its destination."""


def partial_name(path: Path, *, keep_suffix: bool = True) -> Path:
    """A unique hidden sibling of `path`: `.NAME.<pid>-<token>.partial`, plus `path`'s last
    suffix with `keep_suffix` (writers that gzip by suffix still do)."""
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL}{suffix}")


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one step (folders
    on the way are created). On an error the temporary file is removed and `path` is left
    as it was."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(out)
    try:
        yield tmp
        _fsync(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(out.parent, directory=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def install_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`. An existing `out` is replaced whole: it is
    renamed aside first and deleted only once the new folder is in place."""
    if out.is_dir() and any(out.iterdir()):
        old = partial_name(out, keep_suffix=False).with_suffix(".old")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # over a missing or empty folder: one rename
    _fsync(out.parent, directory=True)


# -- strict JSON -----------------------------------------------------------------------------
def plain_json(value: Any) -> Any:
    """A copy of `value` that `json.dumps(..., allow_nan=False)` accepts: NaN/±inf → None,
    numpy scalars and arrays → Python, DataFrames → records, dataclasses → dicts, paths and
    other objects → str."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_json(dataclasses.asdict(value))
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return plain_json(value.to_dict(orient="records"))
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return plain_json(value.tolist())
    return str(value)


def dumps_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON text of `value` (see `plain_json`); `kwargs` go to `json.dumps`."""
    return json.dumps(plain_json(value), allow_nan=False, **kwargs)


# -- checks before work ----------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    raise AssertionError("unreachable: / exists")


def check_output_dir(folder: str | Path, *, what: str) -> None:
    """Raise `InputError` unless files can be created in `folder` (created later if missing)."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise InputError(f"{what}: {str(d)!r} is a file, not a folder; give a path in a folder")
    base = d if d.is_dir() else _existing_ancestor(d)
    if not base.is_dir():
        raise InputError(f"{what}: cannot create folder {str(d)!r}: {str(base)!r} is a file")
    # Ask the file system itself: os.access says yes to root even on read-only mounts.
    probe = partial_name(base / "write-test")
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{what}: cannot write in {str(base)!r} ({exc.strerror}); choose a "
                         f"writable folder") from None


def check_output_file(path: str | Path, *, what: str) -> Path:
    """Raise `InputError` unless `path` names a file that can be written (its folder is
    created if missing); returns `path` as a `Path`."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what}: {str(p)!r} is a folder; give a file path such as "
                         f"{str(p / 'NAME')!r}")
    if p.name in ("", ".", ".."):
        raise InputError(f"{what}: {str(p)!r} names no file")
    check_output_dir(p.parent, what=what)
    return p
