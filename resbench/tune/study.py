"""Studies: their names, where they are stored, samplers, and resuming.

A study is named after what it optimises for, so rerunning the same command finds it and
adds trials to it (`load_if_exists`), and two `resbench tune` processes pointed at one
storage work on one study::

    wan2.2-t2v-a14b__h100-80g__48GB__480x832x81s40cfg

Storage: by default `sqlite:///sweeps/<study>.db`; `--storage` takes any optuna storage URL
(`sqlite:///...`, `postgresql://...`), or a file path ending in `.log` for optuna's
`JournalStorage(JournalFileBackend(path))` (safest for several processes on one machine),
or a path ending in `.db` / `.sqlite` / `.sqlite3` for SQLite.
"""

from __future__ import annotations

import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from resbench.errors import InputError
from resbench.pipeline import Request

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
            path = Path(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
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
    except Exception as exc:  # every driver raises its own errors; the user needs the URL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot open study storage {redact_url(url)!r}: {reason}") from None


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
    # succeeds on retry, the tables being there now.
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine)
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
