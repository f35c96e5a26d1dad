"""Tuning studies (optuna) as DataFrames: trials, best so far, importances, Pareto front.

Reads what `resbench tune` stores and is defensive about the rest: each trial's
``user_attrs`` (``plan_toml``, ``latency_s``, ``peak_device_bytes``, ``fits``, ``preset`` for
the baselines queued first...), its constraints (feasible when all are ≤ 0), and the study's
``user_attrs`` (``model``, ``request``, ``hardware``, ``budget_bytes``, ``scale``) when present.
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from resbench.errors import InputError
from resbench.residency.plan import Plan, plan_from_dict

STUDY_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".log", ".jsonl")
NUMERIC_ATTRS = ("latency_s", "peak_device_bytes", "pinned_host_bytes", "stall_s", "h2d_bytes",
                 "d2h_bytes", "capacity_bytes", "missing_bytes")


def is_study_source(arg: str) -> bool:
    """A storage URL (``sqlite:///...``) or a study file (.db, .sqlite, journal .log)."""
    return "://" in arg or Path(arg).suffix in STUDY_SUFFIXES


def open_storage(target: str) -> Any:
    if "://" in target:
        return target
    path = Path(target)
    if not path.is_file():
        raise InputError(f"study storage {target!r} does not exist")
    if path.suffix in (".log", ".jsonl"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    return f"sqlite:///{path}"


def load_studies(target: str, name: str | None = None) -> list[optuna.Study]:
    """The study `name` in `target`, or every study there when `name` is None."""
    storage = open_storage(target)
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as exc:  # noqa: BLE001 - each storage backend raises its own errors
        raise InputError(f"cannot read studies from {target!r}: {exc}") from None
    if name is not None:
        if name not in names:
            raise InputError(f"no study {name!r} in {target}; studies: {', '.join(names) or 'none'}")
        names = [name]
    if not names:
        raise InputError(f"{target} holds no study")
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def metric_names(study: optuna.Study) -> list[str]:
    names = study.metric_names or []
    n = len(study.directions)
    return [names[i] if i < len(names) and names[i] else f"objective_{i}" for i in range(n)]


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    if t.state != optuna.trial.TrialState.COMPLETE:
        return False
    if t.user_attrs.get("fits") is False:
        return False
    constraints = t.constraints or ()
    values = constraints.values() if isinstance(constraints, dict) else constraints
    return all(v <= 0 for v in values)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``feasible``, ``preset`` (baseline name or
    ''), ``plan_id``, the objectives by metric name (NaN unless complete and feasible),
    the numeric user attributes, and the parameters as ``param:<name>``."""
    names = metric_names(study)
    rows = []
    for t in study.trials:
        feasible = _feasible(t)
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "feasible": feasible,
                               "preset": str(t.user_attrs.get("preset", "")),
                               "plan_id": str(t.user_attrs.get("plan_id", ""))}
        values = t.values or []
        for i, name in enumerate(names):
            row[name] = float(values[i]) if feasible and i < len(values) else np.nan
        for key in NUMERIC_ATTRS:
            if key in t.user_attrs and key not in row:
                row[key] = t.user_attrs[key]
        for key, value in t.params.items():
            row[f"param:{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def best_so_far(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``number``, the trial's ``value`` and the ``best`` feasible value up to it."""
    if trials.empty or metric not in trials:
        return pd.DataFrame(columns=["number", "value", "best"])
    out = trials[["number", metric]].rename(columns={metric: "value"})
    out["best"] = out["value"].cummin()
    return out


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The feasible trial with the smallest first objective (latency)."""
    feasible = [t for t in study.trials if _feasible(t) and t.values]
    return min(feasible, key=lambda t: (t.values[0], t.number)) if feasible else None


def trial_plan(t: optuna.trial.FrozenTrial) -> Plan | None:
    text = t.user_attrs.get("plan_toml")
    if not text:
        return None
    try:
        return plan_from_dict(tomllib.loads(text), source=f"trial {t.number}")
    except (InputError, tomllib.TOMLDecodeError):
        return None


def feasible_study(study: optuna.Study) -> optuna.Study:
    """An in-memory copy holding only the trials that fit (what importances are about)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(level)
    copy.add_trials([t for t in study.trials if _feasible(t)])
    return copy


def importances(study: optuna.Study) -> pd.DataFrame:
    """``param``, ``importance`` of each parameter for the first objective (optuna's default
    evaluator, trials that fit only); empty when there are too few trials to say."""
    feasible = feasible_study(study)
    if len(feasible.trials) < 3:
        return pd.DataFrame(columns=["param", "importance"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            got = optuna.importance.get_param_importances(feasible, target=lambda t: t.values[0])
        except (ValueError, RuntimeError, ZeroDivisionError):
            return pd.DataFrame(columns=["param", "importance"])
    table = pd.DataFrame(sorted(got.items(), key=lambda kv: (-kv[1], kv[0])),
                         columns=["param", "importance"])
    return table[np.isfinite(table["importance"])].reset_index(drop=True)


def pareto_front(trials: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The feasible trials no other feasible trial beats on both `x` and `y` (minimised)."""
    pts = trials[trials["feasible"] & trials[x].notna() & trials[y].notna()].sort_values([x, y])
    keep, best_y = [], np.inf
    for i, v in zip(pts.index, pts[y], strict=True):
        if v < best_y:
            keep.append(i)
            best_y = v
    return pts.loc[keep]


def baselines(study: optuna.Study) -> pd.DataFrame:
    """The best trial and every preset trial: ``plan``, ``kind``, ``latency_s``,
    ``peak_device_bytes``, ``fits``."""
    rows = []
    best = best_trial(study)
    seen: set[str] = {best.user_attrs.get("preset", "")} if best is not None else set()
    for t in study.trials:
        name = t.user_attrs.get("preset")
        if not name or name in seen:
            continue
        seen.add(name)
        rows.append({"plan": str(name), "kind": "preset", "latency_s": t.user_attrs.get("latency_s", np.nan),
                     "peak_device_bytes": t.user_attrs.get("peak_device_bytes", np.nan),
                     "fits": _feasible(t)})
    if best is not None:
        same = best.user_attrs.get("preset")
        rows.insert(0, {"plan": f"best (trial {best.number}{', ' + same if same else ''})", "kind": "best",
                        "latency_s": best.values[0],
                        "peak_device_bytes": best.user_attrs.get("peak_device_bytes", np.nan),
                        "fits": True})
    return pd.DataFrame(rows, columns=["plan", "kind", "latency_s", "peak_device_bytes", "fits"])


def study_context(study: optuna.Study) -> dict[str, Any]:
    """What the study says it searched for (study user attributes), where stored."""
    a = study.user_attrs
    out: dict[str, Any] = {}
    for key in ("model", "request", "hardware", "hardware_profile", "budget_bytes", "scale",
                "host_budget_bytes", "sweep"):
        if key in a:
            out[key] = a[key]
    constraints = a.get("constraints")
    if isinstance(constraints, dict):  # the engine and scoring device the trials ran with
        out["engine"] = constraints.get("engine", "zoo")  # older studies ran the zoo
        out["device"] = constraints.get("device", "sim")
    return out
