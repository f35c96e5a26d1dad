"""Studies: their names, where they are stored, samplers, and resuming.

A study is named after what it optimises for, so rerunning the same command finds it and
adds trials to it (`load_if_exists`), and two `resbench tune` processes pointed at one
storage work on one study::

    wan2.2-t2v-a14b__h100-80g__48GB__480x832x81s40cfg

Storage: by default `sqlite:///sweeps/<study>.db`; `--storage` takes any optuna storage URL
(`sqlite:///...`, `postgresql://...`), or a file path ending in `.log` for optuna's
`JournalStorage(JournalFileBackend(path))` (safest for several processes on one machine),
or a path ending in `.db` / `.sqlite` / `.sqlite3` for SQLite. A journal whose last record
was cut short by a kill is mended when it is opened (`repair_journal`), before anything is
appended to it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from resbench.errors import InputError
from resbench.fileio import check_output_dir
from resbench.pipeline import Request
from resbench.tune.liveness import HEARTBEAT_GRACE_S, HEARTBEAT_INTERVAL_S

logger = logging.getLogger(__name__)
SAMPLERS = ("tpe", "random", "nsga2")
OBJECTIVES = ("latency", "peak-memory")
_CREATE_RACES = ("already exists", "UNIQUE constraint failed", "database is locked")
_SQLITE_TIMEOUT_S = 60  # several workers on one SQLite file wait for the write lock


def budget_label(nbytes: int) -> str:
    """`48GB` for a whole number of GB, `44GiB` for GiB, else the bytes with `B`."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("TiB", 2**40), ("GiB", 2**30),
                         ("MB", 10**6), ("MiB", 2**20)):
        if nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    for unit, factor in (("GB", 10**9), ("MB", 10**6)):
        if nbytes >= factor:
            return f"{nbytes / factor:.3f}".rstrip("0").rstrip(".") + unit
    return f"{nbytes}B"


def request_label(request: Request) -> str:
    """`480x832x81s40cfg`: height x width x frames, steps, CFG mode (and batch if > 1)."""
    cfg = "nocfg" if not request.cfg else ("cfg" if request.cfg_mode == "sequential" else "cfgb")
    label = f"{request.height}x{request.width}x{request.frames}s{request.steps}{cfg}"
    return label + (f"b{request.batch}" if request.batch != 1 else "")


def study_name(model: str, hardware: str, budget_bytes: int, request: Request, *,
               scale: float = 1.0, pareto: bool = False, sweep: str | None = None,
               host_budget_bytes: int | None = None, measured: bool = False,
               engine: str = "zoo") -> str:
    """The default study name: every constraint a user sets on the command line is in it
    (the host budget when given, `cuda` for measured trials, the engine unless it is the
    zoo, whose studies predate engines), so changing one starts a new study instead of
    meeting the stored-constraints check."""
    parts = [model, hardware, budget_label(budget_bytes), request_label(request)]
    if engine != "zoo":
        parts.append(engine)
    if host_budget_bytes is not None:
        parts.append(f"host{budget_label(host_budget_bytes)}")
    if measured:
        parts.append("cuda")
    if scale != 1.0:
        parts.append(f"scale{scale:g}")
    if sweep:
        parts.append(sweep)
    if pareto:
        parts.append("pareto")
    return "__".join(parts)


def default_storage(name: str, folder: Path = Path("sweeps")) -> str:
    return f"sqlite:///{folder / f'{name}.db'}"


def redact_url(url: str) -> str:
    """The storage URL with any password replaced by `***` (for logs, results, plan headers)."""
    from sqlalchemy.engine import make_url

    if "://" not in url or url.startswith("sqlite"):
        return url
    try:
        parsed = make_url(url)
    except Exception:  # not a SQLAlchemy URL (e.g. a journal path): nothing to hide
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def open_storage(url: str) -> BaseStorage:
    """An optuna storage for `url` (see the module docstring); `InputError` naming the URL if
    it cannot be opened."""
    text = str(url).strip()
    try:
        if text.endswith(".log") and "://" not in text:
            return _journal(Path(text))
        if text.endswith((".db", ".sqlite", ".sqlite3")) and "://" not in text:
            text = f"sqlite:///{text}"
        if "://" not in text:
            raise ValueError("not a storage URL (sqlite:///PATH, postgresql://..., or a .log "
                             "file for a journal)")
        engine: dict[str, Any] = {}
        if text.startswith("sqlite:"):
            sqlite_path = text.split(":///", 1)[-1]
            if sqlite_path and sqlite_path != ":memory:":
                Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
                engine = {"creator": _sqlite_connect(sqlite_path)}
        return _rdb(text, engine)
    except InputError:
        raise
    except Exception as exc:  # every driver raises its own errors; the user needs the URL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot open study storage {redact_url(url)!r}: {reason}") from None


def _journal(path: Path) -> JournalStorage:
    """A journal file, its torn last record (if any) cut off first (`repair_journal`); a
    record damaged elsewhere is an `InputError` naming its line."""
    if path.is_dir():
        raise InputError(f"study storage {str(path)!r} is a folder; give a .log file path")
    check_output_dir(path.parent, what="--storage")
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_journal(path)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except ValueError:  # optuna stops at the first record that is not JSON
        line = _first_bad_line(path)
        raise InputError(f"journal {str(path)!r}: line {line} is not a complete record, so "
                         f"the records after it cannot be trusted; restore the file from a "
                         f"copy or use a new --storage") from None


def repair_journal(path: Path) -> int:
    """Mend the last record of an optuna journal file if a kill cut it; return the bytes
    removed.

    optuna appends each record as one JSON line. A process killed during a write (or a full
    disk) can leave the last line short, without its newline; optuna ignores such a line
    when it is the last, but the next append is glued to it and from then on the file
    stops loading at that line. So, under the journal's own lock (a live writer holds it
    for its whole append: what we see is no write in progress): a last line that is a whole
    record missing only its newline gets it; a last line that is not a whole record is cut
    off, its bytes kept in ``<path>.torn``. A warning says which. The records before it are
    not touched."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(path))  # the lock JournalFileBackend takes by default
    lock.acquire()
    try:
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(size - 1)
            ended = fh.read(1) == b"\n"
            start = _line_start(fh, size - 1 if ended else size)
            fh.seek(start)
            last = fh.read()
            whole = _is_record(last)
            if whole and ended:
                return 0
            if whole:  # killed between the record and its newline
                fh.write(b"\n")
            else:
                with open(f"{path}.torn", "ab") as aside:
                    aside.write(last if ended else last + b"\n")
                fh.truncate(start)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        lock.release()
    if whole:
        logger.warning(f"journal {str(path)!r}: its last record lacked its end of line (a "
                       f"write interrupted by a kill); added it")
        return 0
    logger.warning(f"journal {str(path)!r}: its last record was cut short by an interrupted "
                   f"write ({len(last)} bytes); removed it and kept the bytes in "
                   f"{str(path)!r}.torn; the {_count_lines(path)} records before it are intact")
    return len(last)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _line_start(fh: BinaryIO, end: int, chunk: int = 1 << 16) -> int:
    """Offset just past the last newline before `end` (0 if there is none)."""
    while end > 0:
        start = max(0, end - chunk)
        fh.seek(start)
        at = fh.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _first_bad_line(path: Path) -> int:
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                json.loads(line)
            except ValueError:
                return number
    return 0


def _sqlite_connect(path: str) -> Callable[[], sqlite3.Connection]:
    """Connections in WAL mode with synchronous=NORMAL: a trial is ~30 small commits, and
    with the default (rollback journal, fsync on every commit) the storage, not the
    simulator, set the pace (0.75 s a trial measured here). A crash of resbench loses
    nothing; a power cut may lose the last trials. The timeout lets workers queue for the
    write lock instead of failing."""

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(path, timeout=_SQLITE_TIMEOUT_S, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    return connect


def _rdb(url: str, engine: dict[str, Any]) -> RDBStorage:
    # Two workers starting together on a new database race to create its tables and stamp
    # its schema version; the loser sees "already exists", a UNIQUE failure or a lock, and
    # succeeds on retry, the tables being there now. The heartbeat lets any worker fail the
    # trials of a worker that died, on any host (`resbench.tune.liveness`).
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" in optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                  grace_period=HEARTBEAT_GRACE_S)
        except Exception as exc:
            if attempt == 4 or not any(s in str(exc) for s in _CREATE_RACES):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def make_sampler(name: str, *, seed: int | None, n_objectives: int) -> BaseSampler:
    """`tpe` (multivariate, grouped: the space is conditional), `random`, or `nsga2`."""
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            multivariate = n_objectives == 1
            return TPESampler(seed=seed, multivariate=multivariate, group=multivariate)
    if name == "random":
        return RandomSampler(seed=seed)
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=20)
    raise InputError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def open_study(name: str, storage: BaseStorage, *, n_objectives: int,
               sampler: BaseSampler) -> optuna.Study:
    """Create the study, or load it if it exists (another worker may be creating it now)."""
    directions: list[Any] = ["minimize"] * n_objectives
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        directions=directions, load_if_exists=True)
            break
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(0.2 * (attempt + 1))  # created between our check and our insert
        except ValueError as exc:  # e.g. the stored study has another number of objectives
            raise InputError(f"study {name!r}: {exc}") from None
    else:
        raise InputError(f"study {name!r}: could not create or load it")
    if len(study.directions) != n_objectives:
        raise InputError(f"study {name!r} in this storage has {len(study.directions)} "
                         f"objective(s), this run asks for {n_objectives}; use --study-name")
    names = ["latency_s", "peak_device_bytes"][:n_objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def enqueue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """Queue `params` as a next trial unless a trial with them exists (so resuming and a second
    worker do not queue the presets again)."""
    study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=True)
