"""What a study was built under, recorded in it and checked on every rerun.

A study's trials were judged feasible under one device budget, host budget, hardware
profile, request, model scale, sweep, scoring device, engine and resbench version. Adding trials
under other constraints, or picking a best trial judged under them, would give a wrong
answer (a plan that does not fit, written with exit 0). So the first run records them in
the study (`user_attrs["constraints"]`) and every later run must match them exactly, or
stop with an error naming each difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import optuna

from resbench import __version__
from resbench.errors import InputError
from resbench.hardware import HardwareProfile, profile_dict
from resbench.pipeline import Request
from resbench.units import format_bytes

KEY = "constraints"


def _digest(doc: Any) -> str:
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_constraints(model: str, request: Request, profile: HardwareProfile, budget_bytes: int,
                      host_budget_bytes: int, scale: float, sweep: Path, device: str,
                      engine: str = "zoo") -> dict[str, Any]:
    """The constraints of a tune run, as plain JSON values."""
    return {
        "model": model,
        "request": dataclasses.asdict(request),
        "budget_bytes": int(budget_bytes),
        "host_budget_bytes": int(host_budget_bytes),
        "hardware": profile.name,
        "hardware_digest": _digest(profile_dict(profile)),
        "scale": float(scale),
        "sweep_digest": _digest(Path(sweep).read_text()),
        "device": device,
        "engine": engine,
        "resbench_version": __version__,
    }


def _show(key: str, value: Any) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        return format_bytes(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def check_constraints(study: optuna.Study, constraints: dict[str, Any]) -> None:
    """Record `constraints` in a new study; for an existing one, require the same.

    A study made before constraints were recorded is accepted only while it has no trials
    (its trials' budgets are unknown)."""
    stored = study.user_attrs.get(KEY)
    if stored is None:
        if study.trials:
            raise InputError(
                f"study {study.study_name!r} has {len(study.trials)} trials but does not record "
                f"the budgets and hardware they were judged under; start a new study "
                f"(--study-name or --storage)")
        study.set_user_attr(KEY, constraints)
        return
    stored = {"engine": "zoo", **stored}  # studies made before engines ran the zoo
    diffs = [f"{k} {_show(k, stored.get(k))} (this run: {_show(k, v)})"
             for k, v in constraints.items() if stored.get(k) != v]
    if diffs:
        raise InputError(
            f"study {study.study_name!r} was built under other constraints: "
            + "; ".join(diffs)
            + ". Its trials were judged under those; use the same options to resume it, or "
              "another --study-name for a new study")
