"""`tune`: search plans for a model, hardware profile and budget; the library entry point.

One call does, in order: resolve the model, request, hardware and budgets; read the sweep
(so a bad sweep fails before any work); open the study (so a bad storage fails too); record
the schedule once; score every preset in `strategies/presets/` and all-resident on the
whole card directly (for the comparison); queue the presets that fit and that the space can
express as the first trials; run the study; pick the best feasible trial; optionally
re-measure the top plans on the GPU. It returns a `TuneResult` (`resbench.tune.result`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from resbench.errors import DoesNotFitError, InputError
from resbench.hardware import HardwareProfile
from resbench.models.base import ModelSpec
from resbench.models.registry import get_model
from resbench.pipeline import Request
from resbench.profile import PRESET_DIRS, resolve_hardware
from resbench.record import record_schedule
from resbench.residency.plan import Plan, load_plan, plan_from_dict
from resbench.schedule import Schedule
from resbench.tune.objective import INFEASIBLE_LATENCY_S, Evaluation, Evaluator, Objective
from resbench.tune.real import find_measure, real_runner, require_measure
from resbench.tune.result import Baseline, TuneResult, Validation
from resbench.tune.space import NotRepresentable, SearchSpace
from resbench.tune.study import (
    OBJECTIVES,
    SAMPLERS,
    default_storage,
    enqueue,
    make_sampler,
    open_storage,
    open_study,
    redact_url,
    study_name,
)
from resbench.tune.sweep import default_sweep_path, load_sweep
from resbench.units import describe_bytes, format_bytes

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneOptions:
    """What `resbench tune` searches for; sizes in bytes, times in seconds."""

    budget_bytes: int
    """Device memory the plan may use (an emulated card of that size)."""
    model: str = "wan2.2"
    """Model name or alias."""
    request: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model's default request (height, width, frames, steps, ...)."""
    hardware: str | None = None
    """Preset name or profile TOML; None: the detected GPU, else h100-80g."""
    host_budget_bytes: int | None = None
    """Pinned host memory the plan may use; None: the profile's host RAM."""
    scale: float = 1.0
    """Model scale (tests use small ones)."""
    sweep: Path | None = None
    """Sweep TOML; None: sweeps/<family>.toml, else sweeps/default.toml."""
    presets_dir: Path | None = None
    """Plans to compare against and to queue as the first trials; None: strategies/presets
    under the working directory, else the presets shipped with resbench."""
    n_trials: int | None = 200
    """Trials this run adds to the study (None: until `timeout_s`)."""
    timeout_s: float | None = None
    sampler: str | None = None
    """tpe | random | nsga2; None: tpe for latency alone, nsga2 for a Pareto front."""
    objectives: tuple[str, ...] = ("latency",)
    """("latency",) or ("latency", "peak-memory") for the latency / memory Pareto front."""
    seed: int | None = None
    storage: str | None = None
    """optuna storage URL or .log journal path; None: sqlite:///sweeps/<study>.db."""
    study_name: str | None = None
    """None: derived from model, hardware, budget and request (`study.study_name`)."""
    device: Literal["sim", "cuda"] = "sim"
    """sim: score trials with the simulator; cuda: measure each on the GPU."""
    validate: int = 0
    """Re-measure the best K simulated plans on the GPU; the best real one is the answer."""


class NoFeasiblePlanError(DoesNotFitError):
    """No trial fitted the budget; `min_budget_bytes` estimates the smallest that would."""


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during the study: the finished trials are kept in the storage."""

    def __init__(self, study_name: str, storage: str, finished: int) -> None:
        super().__init__(study_name)
        self.study_name = study_name
        self.storage = storage
        self.finished = finished


def tune(options: TuneOptions, *, callbacks: Iterable[Callback] = (),
         log: Callable[[str], None] = lambda _line: None,
         schedule: Schedule | None = None) -> TuneResult:
    """Run the search; see the module docstring. `schedule`: a recording to reuse (it must
    match the options' model, request and scale).

    Raises `InputError` (bad options, sweep, storage), `NoFeasiblePlanError` (nothing fits),
    `TuneInterrupted` (Ctrl-C; the study keeps its finished trials).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = get_model(options.model)
    request = Request.for_model(spec, **options.request)
    profile = resolve_hardware(options.hardware)
    budget = _check_budget(options.budget_bytes, profile, log)
    host_budget = options.host_budget_bytes or profile.host_ram_bytes
    log(f"host budget (pinned) {describe_bytes(host_budget)}")
    pareto = _check_objectives(options.objectives)
    sampler_name = options.sampler or ("nsga2" if pareto else "tpe")
    if sampler_name not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler_name!r}; valid: {', '.join(SAMPLERS)}")
    sweep_path = options.sweep or default_sweep_path(spec.family)
    sweep = load_sweep(sweep_path)
    measure = require_measure() if options.device == "cuda" else None
    if options.device not in ("sim", "cuda"):
        raise InputError(f"device must be sim or cuda, got {options.device!r}")

    name = options.study_name or study_name(
        spec.name, profile.name, budget, request, scale=options.scale, pareto=pareto,
        sweep=None if options.sweep is None else Path(options.sweep).stem)
    secret_url = options.storage or default_storage(name)
    storage = open_storage(secret_url)
    storage_url = redact_url(secret_url)  # what is printed and saved: never the password
    n_objectives = 2 if pareto else 1
    probe = open_study(name, storage, n_objectives=n_objectives,
                       sampler=optuna.samplers.RandomSampler())
    existing = len(probe.trials)
    # Offset the seed by the trials already there, so a resumed run does not replay the
    # first run's random draws.
    seed = None if options.seed is None else options.seed + existing
    study = open_study(name, storage, n_objectives=n_objectives,
                       sampler=make_sampler(sampler_name, seed=seed, n_objectives=n_objectives))
    log(f"study {name} in {storage_url} ({existing} trials so far)")
    if "model" not in study.user_attrs:  # what the study searches for, for reports
        for key, value in {"model": spec.name, "request": dataclasses.asdict(request),
                           "hardware": profile.name, "budget_bytes": budget, "scale": options.scale,
                           "host_budget_bytes": host_budget, "sweep": str(sweep_path)}.items():
            study.set_user_attr(key, value)

    if schedule is None:
        log(f"recording the schedule of {spec.name} at {_request_text(request)}")
        schedule = record_schedule(spec, request, scale=options.scale)
    space = sweep.bind(schedule)
    runner = None if measure is None else real_runner(
        measure, model=spec, request=request, schedule=schedule, scale=options.scale)
    evaluator = Evaluator(schedule, profile, budget_bytes=budget, host_budget_bytes=host_budget,
                          runner=runner)
    baselines = _baselines(options.presets_dir, space, evaluator, spec)
    for b in baselines:
        if b.params is not None and b.evaluation is not None and b.evaluation.feasible(host_budget):
            enqueue(study, b.params, {"preset": b.name})
    # The space's most memory-frugal plan too: if it fits, the study has a feasible trial
    # from the start, and "no plan fits" means the budget is really too small.
    frugal = space.frugal_plan()
    if evaluator.evaluate(frugal).feasible(host_budget):
        enqueue(study, space.params_for(frugal), {"preset": "frugal"})
    all_resident = evaluator.evaluate(Plan(name="all-resident"), full_card=True)

    objective = Objective(space, evaluator, pareto=pareto)
    log(f"searching {space.source} with {sampler_name}: "
        + (f"{options.n_trials} trials" if options.n_trials else "")
        + (f" (at most {options.timeout_s:g} s)" if options.timeout_s else ""))
    ran: list[int] = []  # trials this call finished (other workers may add theirs)
    try:
        study.optimize(objective, n_trials=options.n_trials, timeout=options.timeout_s,
                       callbacks=[lambda _s, t: ran.append(t.number), *callbacks])
    except KeyboardInterrupt:
        finished = sum(t.state.is_finished() for t in study.trials)
        raise TuneInterrupted(name, storage_url, finished) from None

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = [t for t in trials if _feasible(t)]
    if not feasible:
        raise _no_feasible(trials, space, evaluator, baselines, name)
    ranked = sorted(feasible, key=lambda t: t.values[0])
    best_trial = ranked[0]
    capacity = evaluator.sim_capacity(budget)
    best = _evaluation(best_trial, capacity)
    validation: tuple[Validation, ...] = ()
    note = "simulated" if options.device == "sim" else "measured on the GPU"
    if options.validate:
        best, validation, note = _validate(ranked, options, spec, request, schedule, budget,
                                           capacity, best, log)
    front = tuple(_evaluation(t, capacity) for t in sorted(study.best_trials, key=lambda t: t.values[0])
                  ) if pareto else ()
    return TuneResult(
        study_name=name, storage=storage_url, model=spec.name, hardware=profile.name,
        request=request, scale=options.scale, budget_bytes=budget, host_budget_bytes=host_budget,
        sweep=space.source, sampler=sampler_name, seed=options.seed,
        best=best, best_trial=best_trial.number, trials_run=len(ran),
        trials_total=len(trials), trials_feasible=len(feasible), baselines=tuple(baselines),
        all_resident=all_resident, lower_bound_s=evaluator.lower_bound_s(),
        component_kinds=space.component_kinds, pareto=front, validation=validation,
        result_note=note)


def _check_budget(budget: int, profile: HardwareProfile, log: Callable[[str], None]) -> int:
    if budget <= 0:
        raise InputError(f"budget must be > 0, got {budget}")
    if budget > profile.memory_capacity_bytes:
        raise InputError(f"budget {describe_bytes(budget)} is above the capacity of "
                         f"{profile.name} ({profile.description}): "
                         f"{describe_bytes(profile.memory_capacity_bytes)}")
    log(f"budget {describe_bytes(budget)} on {profile.name}")
    if budget > profile.usable_bytes:
        log(f"note: {profile.name} leaves {describe_bytes(profile.usable_bytes)} to one process; "
            f"the budget is capped there")
        return profile.usable_bytes
    return budget


def _check_objectives(objectives: tuple[str, ...]) -> bool:
    for o in objectives:
        if o not in OBJECTIVES:
            raise InputError(f"unknown objective {o!r}; valid: {', '.join(OBJECTIVES)}")
    if tuple(objectives) not in (("latency",), ("latency", "peak-memory")):
        raise InputError("objectives must be `latency` or `latency,peak-memory`")
    return len(objectives) == 2


def _request_text(r: Request) -> str:
    return (f"{r.height}x{r.width}x{r.frames}, {r.steps} steps, cfg "
            f"{'on (' + r.cfg_mode + ')' if r.cfg else 'off'}")


def load_presets(folder: Path | None) -> list[Plan]:
    """Every plan TOML in `folder` (sorted by file name); none if the folder is missing.
    None: the first of `resbench.profile.PRESET_DIRS` that exists."""
    if folder is None:
        folder = next((d for d in PRESET_DIRS if d.is_dir()), None)
    if folder is None or not Path(folder).is_dir():
        return []
    return [load_plan(p) for p in sorted(Path(folder).glob("*.toml"))]


def _baselines(folder: Path | None, space: SearchSpace, evaluator: Evaluator,
               spec: ModelSpec) -> list[Baseline]:
    kinds: dict[str, str] = {c.name: c.kind for c in spec.components}
    out = []
    for plan in load_presets(folder):
        try:
            plan.check_components(kinds, source=plan.name)
        except InputError as exc:
            out.append(Baseline(plan.name, None, None, f"not for this model: {exc}"))
            continue
        try:
            params: dict[str, Any] | None = space.params_for(plan)
            why = ""
        except NotRepresentable as exc:
            params, why = None, str(exc)
        out.append(Baseline(plan.name, evaluator.evaluate(plan), params, why))
    return out


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return bool(t.constraints) and all(v <= 0 for v in t.constraints.values())


def _evaluation(t: optuna.trial.FrozenTrial, capacity_bytes: int) -> Evaluation:
    """Rebuild a trial's `Evaluation` from its user attributes."""
    a = t.user_attrs
    plan = plan_from_dict(tomllib.loads(a["plan_toml"]), source=f"trial {t.number}")
    fits = bool(a.get("fits", "missing_bytes" not in a))
    return Evaluation(plan=plan, fits=fits,
                      latency_s=a["latency_s"] if fits else INFEASIBLE_LATENCY_S,
                      peak_device_bytes=a["peak_device_bytes"],
                      pinned_host_bytes=a["pinned_host_bytes"], stall_s=a.get("stall_s", 0.0),
                      h2d_bytes=a.get("h2d_bytes", 0), d2h_bytes=a.get("d2h_bytes", 0),
                      capacity_bytes=capacity_bytes, missing_bytes=a.get("missing_bytes", 0),
                      needed_budget_bytes=a.get("needed_budget_bytes"),
                      measured=a.get("measured", False))


def _no_feasible(trials: list[optuna.trial.FrozenTrial], space: SearchSpace,
                 evaluator: Evaluator, baselines: list[Baseline], name: str) -> NoFeasiblePlanError:
    """The error for a study without a feasible trial, with the smallest budget estimated
    from the trials, the presets and the space's most memory-frugal plan."""
    frag = evaluator.profile.fragmentation_fraction
    needs: list[int] = []
    host_bound = False
    for t in trials:
        a = t.user_attrs
        if "missing_bytes" in a:
            if a.get("needed_budget_bytes"):
                needs.append(a["needed_budget_bytes"])
            continue
        over = t.constraints.get("peak_device", 0)
        if over <= 0:
            host_bound = True  # fits the device; pins more than the host budget
            continue
        # over = peak + margin - capacity: the budget needed is (peak + margin) / (1 - frag)
        needs.append(math.ceil((over + evaluator.sim_capacity(evaluator.budget_bytes)) / (1 - frag)))
    needs += [b.evaluation.needed_budget_bytes for b in baselines
              if b.evaluation is not None and b.evaluation.needed_budget_bytes]
    frugal = evaluator.needed_budget(space.frugal_plan())
    if frugal:
        needs.append(frugal)
    smallest = min(needs) if needs else None
    msg = (f"no plan fits {format_bytes(evaluator.budget_bytes)} on {evaluator.profile.name} "
           f"({len(trials)} trials in study {name})")
    if host_bound:
        msg += (f"; some fit the device but pin more than the host budget of "
                f"{format_bytes(evaluator.host_budget_bytes)} (raise --host-budget)")
    if smallest is not None and smallest > evaluator.budget_bytes:
        msg += f"; the smallest budget estimated to fit is {format_bytes(smallest)}"
    elif not host_bound:
        msg += "; run more trials (--n-trials)"
    return NoFeasiblePlanError(msg, missing_bytes=max(0, (smallest or 0) - evaluator.budget_bytes),
                               min_budget_bytes=smallest)


def _validate(ranked: list[optuna.trial.FrozenTrial], options: TuneOptions, spec: ModelSpec,
              request: Request, schedule: Schedule, budget: int, capacity: int,
              best: Evaluation, log: Callable[[str], None]) -> tuple[Evaluation, tuple[Validation, ...], str]:
    if options.device == "cuda":
        return best, (), "measured on the GPU (--validate not needed)"
    module, why = find_measure()
    if module is None:
        log(f"--validate {options.validate}: {why}; the result is simulated")
        return best, (), f"simulated ({why}: not validated)"
    run = real_runner(module, model=spec, request=request, schedule=schedule, scale=options.scale)
    seen: set[str] = set()
    rows: list[Validation] = []
    best_real: Evaluation | None = None
    for t in ranked:
        if len(rows) >= options.validate:
            break
        if t.user_attrs["plan_id"] in seen:
            continue
        seen.add(t.user_attrs["plan_id"])
        sim = _evaluation(t, capacity)
        log(f"validating trial {t.number} on the GPU")
        try:
            r = run(sim.plan, budget)
            real = dataclasses.replace(sim, latency_s=r.latency_s, stall_s=r.stall_s,
                                       peak_device_bytes=r.peak_device_bytes,
                                       pinned_host_bytes=r.pinned_host_bytes,
                                       h2d_bytes=r.h2d_bytes, d2h_bytes=r.d2h_bytes,
                                       measured=True)
        except DoesNotFitError as exc:
            rows.append(Validation(t.number, sim.latency_s, None, str(exc)))
            continue
        rows.append(Validation(t.number, sim.latency_s, real.latency_s, ""))
        if best_real is None or real.latency_s < best_real.latency_s:
            best_real = real
    if best_real is None:
        return best, tuple(rows), "simulated (no validated plan ran on the GPU)"
    return best_real, tuple(rows), f"measured on the GPU (best of {len(rows)} validated)"
