"""What `tune` returns: the best plan, how it compares, and how it was found.

Frames for the terminal (`components_frame`, `comparison_frame`, `pareto_frame`), one JSON
document (`to_dict`, `schema = 1`), and the tuned plan TOML with a header comment saying how
it was found (`plan_toml`, `save_plan`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from resbench import __version__
from resbench.pipeline import Request
from resbench.residency.plan import Plan, config_to_dict
from resbench.tune.objective import Evaluation
from resbench.tune.study import budget_label, request_label
from resbench.units import format_bytes

SCHEMA = 1
GiB = 2**30


@dataclass(frozen=True, slots=True)
class Baseline:
    """A preset scored directly; `params` is None when the sweep cannot express it (`why`)."""

    name: str
    evaluation: Evaluation | None
    """None when the preset does not apply to the model."""
    params: dict[str, Any] | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Validation:
    """A simulated plan re-run on the GPU (`real_latency_s` None: it did not fit)."""

    trial: int
    sim_latency_s: float
    real_latency_s: float | None
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneResult:
    study_name: str
    storage: str
    model: str
    hardware: str
    request: Request
    scale: float
    budget_bytes: int
    host_budget_bytes: int
    sweep: str
    sampler: str
    seed: int | None
    best: Evaluation
    """The answer: the fastest feasible trial (or the fastest validated on the GPU)."""
    best_trial: int
    trials_run: int
    """Trials this call added."""
    trials_total: int
    """Complete trials in the study (all runs and workers)."""
    trials_feasible: int
    baselines: tuple[Baseline, ...]
    all_resident: Evaluation
    """Every component resident on the whole card (no budget): the no-offload reference."""
    lower_bound_s: float
    """max(total compute, must-move bytes / H2D bandwidth) under the budget."""
    component_kinds: tuple[tuple[str, str], ...]
    pareto: tuple[Evaluation, ...] = ()
    validation: tuple[Validation, ...] = ()
    result_note: str = "simulated"
    min_budget_bytes: int | None = None
    """The smallest budget any plan fits in (`analysis.budget.min_budget_bytes`)."""
    last_gain_trial: int | None = None
    """The trial (number) after which no feasible trial beat the best so far by `GAIN`
    (`last_gain`); None where none is feasible."""

    def converged(self) -> bool:
        """No gain of `GAIN` or more in the later half of the study's trials (`settled`)."""
        return settled(self.last_gain_trial, self.trials_total)

    # -- the plan file ---------------------------------------------------------------------
    def plan(self) -> Plan:
        return dataclasses.replace(
            self.best.plan, name=f"{self.model}/{self.hardware}/{budget_label(self.budget_bytes)}"
                                 f"/tuned",
            description=(f"found by resbench tune: trial {self.best_trial} of study "
                         f"{self.study_name}; {self.result_note}"))

    def default_out_path(self) -> Path:
        scale = f"-scale{self.scale:g}" if self.scale != 1.0 else ""
        return (Path("strategies") / self.model
                / f"{self.hardware}-{budget_label(self.budget_bytes)}{scale}.tuned.toml")

    def plan_toml(self) -> str:
        r = self.request
        b = self.best
        lines = [
            f"# Tuned by `resbench tune` (resbench {__version__}) on "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
            f"# Best of {self.trials_total} trials ({self.trials_feasible} feasible; sampler "
            f"{self.sampler}, seed {self.seed}) of study {self.study_name}",
            f"# in {self.storage}, over the space {self.sweep}.",
            f"# {self.model} at {r.height}x{r.width}x{r.frames}, {r.steps} steps, cfg "
            f"{'on' if r.cfg else 'off'}" + (f", scale {self.scale:g}" if self.scale != 1 else "")
            + f"; {self.hardware} with a device budget of {format_bytes(self.budget_bytes)} and "
            f"a pinned host budget of {format_bytes(self.host_budget_bytes, binary=True)}.",
            f"# Latency {b.latency_s:.3f} s ({self.result_note}){_steady_note(b)}, peak device "
            f"{format_bytes(b.peak_device_bytes, binary=True)}, pinned host "
            f"{format_bytes(b.pinned_host_bytes, binary=True)}.",
        ]
        for row in self._speedups():
            lines.append(f"# {row}")
        return "\n".join(lines) + "\n\n" + self.plan().to_toml()

    def save_plan(self, path: Path | None = None) -> Path:
        path = Path(path) if path is not None else self.default_out_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.plan_toml())
        return path

    def _speedups(self) -> list[str]:
        """The tuned latency against each reference, every figure labelled measured or
        simulated; a ratio only between figures of the same kind."""
        best = self.best
        out = []
        refs = [(f"preset {b.name}", b.evaluation) for b in self.baselines
                if b.evaluation is not None and b.evaluation.feasible(self.host_budget_bytes)]
        if self.all_resident.fits:
            refs.append(("all-resident on the whole card", self.all_resident))
        for name, ev in refs:
            if ev.measured == best.measured:
                out.append(f"{ev.latency_s / best.latency_s:.2f}x vs {name} "
                           f"({ev.latency_s:.3f} s {_kind(ev)})")
            else:
                out.append(f"{name}: {ev.latency_s:.3f} s {_kind(ev)} (not compared with the "
                           f"{_kind(best)} tuned latency)")
        out.append(f"{best.latency_s / self.lower_bound_s:.3f}x the lower bound "
                   f"({self.lower_bound_s:.3f} s, cost model)")
        return out

    # -- frames ----------------------------------------------------------------------------
    def components_frame(self) -> pd.DataFrame:
        plan = self.best.plan
        rows = []
        for comp, kind in self.component_kinds:
            cfg = plan.config_for(comp, kind)
            knobs = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
            rows.append({"component": comp, "kind": kind, "strategy": cfg.name,
                         "knobs": ", ".join(f"{k}={v}" for k, v in knobs.items())})
        return pd.DataFrame(rows)

    def comparison_frame(self) -> pd.DataFrame:
        """Tuned plan, each preset, all-resident on the whole card, the lower bound.
        `speedup` is the row's latency over the tuned latency (how much faster tuned is)."""
        best = self.best.latency_s

        def row(name: str, source: str, ev: Evaluation | None, in_space: bool | None) -> dict[str, Any]:
            fits = ev is not None and ev.feasible(self.host_budget_bytes)
            latency = ev.latency_s if ev is not None and ev.fits else float("nan")
            return {"plan": name, "source": source,
                    "in_space": "" if in_space is None else ("yes" if in_space else "no"),
                    "fits": "yes" if fits else "no", "latency_s": latency,
                    "latency": _kind(ev) if ev is not None and ev.fits else "",
                    "peak_device_gib": (ev.peak_device_bytes / GiB if ev is not None and ev.fits
                                        else float("nan")),
                    "speedup": latency / best if fits else float("nan")}

        rows = [row("tuned", f"trial {self.best_trial}", self.best, None)]
        rows += [row(b.name, "preset", b.evaluation, b.params is not None) for b in self.baselines]
        resident = row("all-resident (whole card)", "no budget", self.all_resident, None)
        resident["fits"] = "yes" if self.all_resident.fits else "no"
        resident["speedup"] = (self.all_resident.latency_s / best if self.all_resident.fits
                               else float("nan"))
        rows.append(resident)
        rows.append({"plan": "lower bound", "source": "max(compute, must-move / H2D)",
                     "in_space": "", "fits": "", "latency_s": self.lower_bound_s,
                     "latency": "cost model",
                     "peak_device_gib": float("nan"), "speedup": self.lower_bound_s / best})
        return pd.DataFrame(rows)

    def pareto_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"latency_s": e.latency_s,
                              "peak_device_gib": e.peak_device_bytes / GiB,
                              "plan": _plan_summary(e.plan)} for e in self.pareto])

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "study_name": self.study_name, "storage": self.storage,
            "model": self.model, "hardware": self.hardware, "scale": self.scale,
            "request": dataclasses.asdict(self.request), "request_label": request_label(self.request),
            "budget_bytes": self.budget_bytes, "host_budget_bytes": self.host_budget_bytes,
            "sweep": self.sweep, "sampler": self.sampler, "seed": self.seed,
            "result": self.result_note, "best_trial": self.best_trial,
            "trials_run": self.trials_run, "trials_total": self.trials_total,
            "trials_feasible": self.trials_feasible, "min_budget_bytes": self.min_budget_bytes,
            "last_gain_trial": self.last_gain_trial, "converged": self.converged(),
            "best": _evaluation_dict(self.best),
            "all_resident_full_card": _evaluation_dict(self.all_resident),
            "lower_bound_s": self.lower_bound_s,
            "presets": [{"name": b.name, "in_space": b.params is not None, "why_not": b.why,
                         **(_evaluation_dict(b.evaluation) if b.evaluation else {}),
                         "feasible": (b.evaluation is not None
                                      and b.evaluation.feasible(self.host_budget_bytes))}
                        for b in self.baselines],
            "pareto": [_evaluation_dict(e) for e in self.pareto],
            "validation": [dataclasses.asdict(v) for v in self.validation],
        }


GAIN = 0.01
"""The relative improvement of the best latency that counts as a gain (`last_gain`)."""


def last_gain(latencies: Iterable[tuple[int, float]], gain: float = GAIN) -> int | None:
    """The number of the last trial that beat the best latency before it by `gain` or more
    (relative), over (trial number, latency) pairs of feasible trials in any order; the first
    feasible trial counts as a gain. None for no trials."""
    best, last = math.inf, None
    for number, latency in sorted(latencies):
        if latency < best * (1 - gain):
            last = number
        best = min(best, latency)
    return last


def settled(last_gain_trial: int | None, trials_total: int) -> bool:
    """No gain in the later half of `trials_total` trials: a heuristic (TPE can still find a
    better plan later), but a search that gained late has not settled."""
    if last_gain_trial is None:
        return False
    return trials_total - 1 - last_gain_trial >= trials_total / 2


def search_note(last_gain_trial: int | None, trials_total: int) -> str | None:
    """One line on how settled the search is, for the tune command's summary."""
    if last_gain_trial is None:
        return None
    since = trials_total - 1 - last_gain_trial
    line = (f"search: the best last improved by {GAIN:.0%} or more at trial {last_gain_trial}, "
            f"{since} trial{'' if since == 1 else 's'} ago")
    if not settled(last_gain_trial, trials_total):
        line += ("; it may not have settled: the same command with more --n-trials resumes "
                 "the study")
    return line


def _steady_note(e: Evaluation) -> str:
    """What the latency is for a plan that keeps weights across requests: the steady state."""
    if not e.steady_state:
        return ""
    cold = f"; the first, cold: {e.cold_latency_s:.3f} s" if e.cold_latency_s is not None else ""
    return (f" in steady state (the second of two back-to-back requests, the resident blocks "
            f"kept from the first{cold}; peaks over both)")


def _kind(e: Evaluation) -> str:
    return "measured" if e.measured else "simulated"


def _evaluation_dict(e: Evaluation) -> dict[str, Any]:
    return {"fits": e.fits, "latency_s": e.latency_s if e.fits else None,
            "steady_state": e.steady_state, "cold_latency_s": e.cold_latency_s,
            "peak_device_bytes": e.peak_device_bytes, "pinned_host_bytes": e.pinned_host_bytes,
            "stall_s": e.stall_s, "h2d_bytes": e.h2d_bytes, "d2h_bytes": e.d2h_bytes,
            "missing_bytes": e.missing_bytes, "measured": e.measured,
            "failure": e.failure or None,
            "plan": e.plan.to_dict()}


def _plan_summary(plan: Plan) -> str:
    parts = [plan.policy + (f"+{format_bytes(plan.buffer_margin_bytes, binary=True)}"
                            if plan.policy == "dynamic" else "")]
    for key, cfg in plan.components:
        knobs = {k: v for k, v in config_to_dict(cfg).items() if k != "strategy"}
        parts.append(f"{key}={cfg.name}" + (f"({','.join(f'{k}={v}' for k, v in knobs.items())})"
                                            if knobs else ""))
    return " ".join(parts)
