"""A persisted run: one request's trace plus everything needed to read it later.

A run is a directory (``schema = 1``)::

    RUN/
      run.json           what ran and what came out (below)
      plan.toml          the plan, as `Plan.to_toml` wrote it
      events.parquet     the tracer's events (`resbench.trace.COLUMNS`), when pyarrow is
      events.csv.gz      installed, else gzipped CSV; `load_run` reads either
      schedule.json.gz   optional: the recorded schedule, so the run can be re-simulated

``run.json`` keys: ``schema``, ``name``, ``created``, ``device`` (sim | cuda | cpu),
``model``, ``request`` (the `Request` fields), ``capacity_bytes`` (the budget the run
had), ``profile`` (`profile_dict` of the hardware profile), ``result`` (the `SimResult`
or real result's fields: seconds and bytes), ``schedule_summary``, ``versions``,
``events_file``, ``extra`` (free JSON: anything a caller wants to keep).

`save_run` writes one whole or not at all: it is built under a hidden
``.RUN.<pid>-<token>.partial`` name and renamed into place, and an existing run is replaced
only with ``force``. `load_run` reads one back into a `Run`, naming any missing or damaged
file. A run, schedule or Parquet events file of another schema is an error that names both
versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import io
import json
import logging
import platform
import shutil
import tomllib
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from resbench.errors import InputError
from resbench.fileio import PARTIAL, check_output_dir, dumps_json, install_dir, partial_name
from resbench.hardware import HardwareProfile, get_profile, profile_dict
from resbench.models.base import UnitInfo
from resbench.residency.plan import Plan, plan_from_dict
from resbench.schedule import ComponentUse, MergeCall, Schedule, UnitCall
from resbench.trace import COLUMNS, Tracer, to_parquet

SCHEMA = 1
META_FILE = "run.json"
PLAN_FILE = "plan.toml"
SCHEDULE_FILE = "schedule.json.gz"
_STR_COLUMNS = ("kind", "component", "unit", "stage", "stream", "reason")
_INT_COLUMNS = ("step", "bytes", "flops", "device_bytes", "pinned_bytes")
logger = logging.getLogger(__name__)
_VERSIONED = ("resbench", "torch", "pandas", "numpy", "optuna", "matplotlib", "pyarrow")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """A loaded run. `events` is the tracer frame; `schedule` is None unless it was saved."""

    name: str
    events: pd.DataFrame
    model: str
    request: dict[str, Any]
    plan_toml: str
    profile: dict[str, Any]
    result: dict[str, Any]
    device: str = "sim"
    capacity_bytes: int | None = None
    schedule_summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    schedule: Schedule | None = None
    path: Path | None = None

    @property
    def plan(self) -> Plan:
        return plan_from_dict(tomllib.loads(self.plan_toml), source=f"run {self.name}: plan")

    def meta(self) -> dict[str, Any]:
        """Everything but the events and the schedule, as plain JSON-able data."""
        return {
            "schema": SCHEMA, "name": self.name, "created": self.created, "device": self.device,
            "model": self.model, "request": self.request, "capacity_bytes": self.capacity_bytes,
            "plan": tomllib.loads(self.plan_toml), "profile": self.profile,
            "result": self.result, "schedule_summary": self.schedule_summary,
            "versions": self.versions, "extra": self.extra,
        }


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on (installed ones only)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _plain(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj)


_RESULT_FIELDS = ("latency_s", "compute_s", "stall_s", "h2d_bytes", "d2h_bytes",
                  "peak_device_bytes", "pinned_host_bytes", "budget_bytes", "h2d_peak_bytes_per_s")


def _from_profile_result(res: Any) -> dict[str, Any]:
    """The fields of a `resbench.profile.ProfileResult` (duck-typed: `.trace`, `.plan`...)."""
    profile: Any = getattr(res, "profile", None)
    if profile is None:
        try:
            profile = get_profile(res.hardware)
        except InputError:
            profile = {"name": res.hardware}
    return {
        "events": res.trace, "plan": res.plan, "profile": profile, "model": res.model,
        "request": res.request, "device": res.device, "schedule": getattr(res, "schedule", None),
        "capacity_bytes": getattr(res, "budget_bytes", None),
        "result": {f: getattr(res, f) for f in _RESULT_FIELDS if hasattr(res, f)},
        "extra": dict(getattr(res, "extra", {}) or {}),
    }


def save_run(path: str | Path, source: Any = None, /, *, force: bool = False,
             **fields: Any) -> dict[str, Path]:
    """Write a run directory at `path`; see `check_run_dir` for what may already be there
    (`force`: replace an existing run whole).

    The run is written into a hidden sibling folder and renamed to `path` once complete, so
    a crash leaves no folder that `load_run` would take for a run (only a
    ``.NAME.<pid>-<token>.partial`` folder beside it, safe to delete).

    Either pass a `ProfileResult` as `source` (what `resbench profile` returns), or the
    fields as keywords (keywords also override `source`'s):

    * ``events`` — `Tracer.frame()` DataFrame or the `Tracer`;
    * ``plan`` (`Plan`), ``profile`` (`HardwareProfile` or its dict), ``model`` (name);
    * ``request``, ``result`` — dataclasses (`Request`, `SimResult`) or mappings;
    * ``device`` (sim | cuda | cpu), ``capacity_bytes`` (the budget), ``name``;
    * ``schedule`` — saved whole, so the run can be re-simulated (budget curves);
    * ``extra`` — free JSON; ``created`` — ISO time (default now; fix it for golden files);
    * ``parquet`` — None: Parquet when pyarrow is importable, else gzipped CSV.

    Returns the paths written: ``run`` (the directory), ``meta``, ``plan``, ``events`` and
    ``schedule`` when saved.
    """
    args = _from_profile_result(source) if source is not None else {}
    args.update(fields)
    unknown = set(args) - {"events", "plan", "profile", "model", "request", "result", "device",
                           "capacity_bytes", "schedule", "name", "extra", "created", "parquet"}
    if unknown:
        raise TypeError(f"save_run: unknown fields {sorted(unknown)}")
    missing = [k for k in ("events", "plan", "profile", "model", "request", "result") if k not in args]
    if missing:
        raise TypeError(f"save_run: missing fields {missing}")
    out = Path(path)
    check_run_dir(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(out, keep_suffix=False)
    tmp.mkdir()
    try:
        names = _write_run_files(tmp, args, name=args.get("name") or out.name)
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": out, **{key: out / name for key, name in names.items()}}


def check_run_dir(path: str | Path, *, force: bool = False) -> None:
    """Raise `InputError` unless a run can be written at `path`: a new or empty folder, or
    (with `force`) a folder holding a run, which is then replaced whole. A run is never
    mixed into a folder that holds other files, and a folder that holds files but no run
    is never deleted, even with `force`."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"run folder {str(out)!r} is a file; give a new folder for --out")
    if out.is_dir() and any(out.iterdir()):
        if not is_run(out):
            raise InputError(f"run folder {str(out)!r} holds files but no run; resbench does "
                             f"not delete them even with --force: choose a new folder for --out")
        if not force:
            raise InputError(f"run folder {str(out)!r} already holds a run; pass --force to "
                             f"replace it whole, or choose a new folder for --out")
    check_output_dir(out.parent, what="run folder")
    leftovers = sorted(out.parent.glob(f".{glob.escape(out.name)}.*{PARTIAL}"))
    if leftovers:
        logger.warning(f"{str(leftovers[0])!r}: a run left unfinished by an interrupted save "
                       f"(not a run; safe to delete)")


def _write_run_files(folder: Path, args: dict[str, Any], *, name: str) -> dict[str, str]:
    """The run's files in `folder`; returns their names by key (meta, plan, events...)."""
    events = args["events"]
    frame = events.frame() if isinstance(events, Tracer) else events
    parquet = args.get("parquet")
    if parquet is None:
        try:
            import pyarrow  # noqa: F401
            parquet = True
        except ImportError:
            parquet = False
    names = {"meta": META_FILE, "plan": PLAN_FILE,
             "events": "events.parquet" if parquet else "events.csv.gz"}
    if parquet:
        to_parquet(frame, str(folder / names["events"]), meta={"schema": SCHEMA})
    else:
        frame.to_csv(folder / names["events"], index=False,
                     compression={"method": "gzip", "mtime": 0})
    schedule = args.get("schedule")
    if schedule is not None:
        names["schedule"] = SCHEDULE_FILE
        _write_gz_json(folder / SCHEDULE_FILE, schedule_to_dict(schedule))
    (folder / PLAN_FILE).write_text(args["plan"].to_toml())
    profile = args["profile"]
    created = args.get("created")
    doc = {
        "schema": SCHEMA,
        "name": name,
        "created": created if created is not None else datetime.now(UTC).isoformat(timespec="seconds"),
        "device": args.get("device", "sim"),
        "model": args["model"],
        "request": _plain(args["request"]),
        "capacity_bytes": args.get("capacity_bytes"),
        "profile": profile_dict(profile) if isinstance(profile, HardwareProfile) else dict(profile),
        "result": _plain(args["result"]),
        "schedule_summary": schedule_summary(schedule) if schedule is not None else {},
        "versions": versions(),
        "events_file": names["events"],
        "extra": dict(args.get("extra") or {}),
    }
    # Strict JSON: a result without a value (NaN, e.g. no H2D peak on the CPU device) is null.
    (folder / META_FILE).write_text(dumps_json(doc, indent=2, sort_keys=True) + "\n")
    return names


def load_run(path: str | Path) -> Run:
    """Read a run directory (or its ``run.json``) written by `save_run`; `InputError` naming
    the file when a file is missing, damaged (truncated, not JSON/gzip/Parquet) or of
    another schema."""
    p = Path(path)
    root = p.parent if p.name == META_FILE else p
    meta_path = root / META_FILE
    if is_unfinished(root):
        raise InputError(f"{str(root)!r} is a run left unfinished by an interrupted save, not "
                         f"a run; delete it")
    if not meta_path.is_file():
        raise InputError(f"{str(p)!r} is not a run: no {META_FILE} in {str(root)!r}")
    try:
        doc = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{meta_path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{meta_path}: not a run description (a JSON object)")
    _check_schema(doc.get("schema"), meta_path, "run")
    events_path = root / str(doc.get("events_file", "events.parquet"))
    plan_path = root / PLAN_FILE
    for needed in (events_path, plan_path):
        if not needed.is_file():
            raise InputError(f"run {str(root)!r}: {needed.name} is missing; the run is "
                             f"incomplete (profile it again with --force)")
    with _reading(events_path):
        events = read_events(events_path)
    schedule = None
    if (root / SCHEDULE_FILE).is_file():
        with _reading(root / SCHEDULE_FILE), gzip.open(root / SCHEDULE_FILE, "rt") as fh:
            schedule = schedule_from_dict(json.load(fh), source=str(root / SCHEDULE_FILE))
    with _reading(plan_path):
        plan_toml = plan_path.read_text()
    return Run(
        name=doc.get("name", root.name), events=events, model=doc.get("model", ""),
        request=doc.get("request", {}), plan_toml=plan_toml,
        profile=doc.get("profile", {}), result=doc.get("result", {}),
        device=doc.get("device", "sim"), capacity_bytes=doc.get("capacity_bytes"),
        schedule_summary=doc.get("schedule_summary", {}), versions=doc.get("versions", {}),
        created=doc.get("created", ""), extra=doc.get("extra", {}), schedule=schedule, path=root,
    )


def _check_schema(found: Any, path: Path | str, what: str) -> None:
    if found != SCHEMA:
        raise InputError(f"{path}: {what} schema {found!r} found; this resbench reads "
                         f"{what} schema {SCHEMA}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the many ways a damaged file fails to parse into one `InputError` naming it."""
    try:
        yield
    except InputError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, zlib.error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: damaged or truncated ({reason}); the run cannot be read, "
                         f"profile it again with --force") from None


def is_run(path: str | Path) -> bool:
    p = Path(path)
    root = p.parent if p.name == META_FILE else p
    return (root / META_FILE).is_file() and not is_unfinished(root)


def is_unfinished(path: str | Path) -> bool:
    """Whether `path` is `save_run`'s temporary folder: not a run, though it may hold every
    file, run.json included, when the save was stopped just before the rename that
    completes it."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(PARTIAL)


def read_events(path: Path) -> pd.DataFrame:
    """Events back as the tracer wrote them: `COLUMNS`, strings '' not NaN, ints as int64."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = (pq.read_schema(path).metadata or {}).get(b"resbench")
        if meta is not None:
            _check_schema(json.loads(meta).get("schema"), path, "events")
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False,
                            na_values={"end_s": [""]})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: events lack columns {', '.join(missing)}")
    frame = frame[list(COLUMNS)].copy()
    for c in _STR_COLUMNS:
        frame[c] = frame[c].fillna("").astype(str)
    for c in ("t_s", "end_s", "stall_s"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    for c in _INT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c]).astype("int64")
    return frame


# -- schedules ------------------------------------------------------------------------------
def schedule_summary(schedule: Schedule) -> dict[str, Any]:
    """Sizes and costs of a schedule, per component: units, calls, weight bytes, FLOPs."""
    comps: dict[str, dict[str, int]] = {}
    for u in schedule.units:
        entry = comps.setdefault(u.component, {"units": 0, "weight_bytes": 0, "calls": 0, "flops": 0})
        entry["units"] += 1
        entry["weight_bytes"] += u.weight_bytes
    for c in schedule.calls:
        entry = comps.setdefault(c.component, {"units": 0, "weight_bytes": 0, "calls": 0, "flops": 0})
        entry["calls"] += 1
        entry["flops"] += c.flops
    steps = sorted({c.step for c in schedule.calls if c.step >= 0})
    return {
        "model": schedule.model, "scale": schedule.scale, "calls": len(schedule.calls),
        "steps": len(steps), "stages": list(schedule.stage_order),
        "state_bytes": schedule.state_bytes, "kinds": dict(schedule.component_kinds),
        "weight_bytes": sum(u.weight_bytes for u in schedule.units), "components": comps,
    }


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """A JSON-able schedule; calls and units are stored column-wise (compact)."""
    def columns(items: tuple[Any, ...], cls: type) -> dict[str, list[Any]]:
        names = [f.name for f in dataclasses.fields(cls)]
        return {n: [getattr(x, n) for x in items] for n in names}

    return {
        "schema": SCHEMA, "model": schedule.model, "scale": schedule.scale,
        "request": schedule.request, "stage_order": list(schedule.stage_order),
        "state_bytes": schedule.state_bytes,
        "component_kinds": [list(p) for p in schedule.component_kinds],
        "uses": [dataclasses.asdict(u) for u in schedule.uses],
        "units": columns(schedule.units, UnitInfo), "calls": columns(schedule.calls, UnitCall),
        "merges": [dataclasses.asdict(m) for m in schedule.merges],
    }


def schedule_from_dict(doc: dict[str, Any], *, source: str = "schedule") -> Schedule:
    _check_schema(doc.get("schema"), source, "schedule")

    def rows(cols: dict[str, list[Any]], cls: type) -> tuple[Any, ...]:
        names = list(cols)
        return tuple(cls(**dict(zip(names, vals, strict=True))) for vals in zip(*cols.values(), strict=True))

    return Schedule(
        model=doc["model"], scale=doc["scale"], request=doc["request"],
        units=rows(doc["units"], UnitInfo), uses=tuple(ComponentUse(**u) for u in doc["uses"]),
        stage_order=tuple(doc["stage_order"]), calls=rows(doc["calls"], UnitCall),
        state_bytes=doc.get("state_bytes", 0),
        component_kinds=tuple(tuple(p) for p in doc.get("component_kinds", ())),
        merges=tuple(MergeCall(**m) for m in doc.get("merges", ())),
    )


def _write_gz_json(path: Path, doc: Any) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
        fh.write(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())
    path.write_bytes(buf.getvalue())
