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
import time
import tomllib
from collections.abc import Callable, Iterable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from resbench.analysis.budget import min_budget_bytes
from resbench.engines.base import Engine, make_engine
from resbench.errors import DoesNotFitError, InputError
from resbench.execution import Backend, cuda_unavailable, make_backend
from resbench.hardware import HardwareProfile, profile_dict
from resbench.models.base import ModelSpec
from resbench.models.registry import get_model
from resbench.pipeline import Request
from resbench.profile import resolve_hardware
from resbench.residency.plan import Plan, plan_from_dict
from resbench.resources import load_presets, sweep_path
from resbench.schedule import Schedule
from resbench.tune.constraints import check_constraints, study_constraints
from resbench.tune.interrupts import Interrupts
from resbench.tune.liveness import StaleTrials, StaleWatch, fail_own_trials
from resbench.tune.objective import INFEASIBLE_LATENCY_S, Evaluation, Evaluator, Objective
from resbench.tune.result import Baseline, TuneResult, Validation, last_gain
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
from resbench.tune.sweep import load_sweep
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
    engine: str | None = None
    """diffusers | zoo: where the pipeline comes from; None: diffusers for the models it
    implements, else zoo (`resbench.engines.base`)."""
    sweep: Path | None = None
    """Sweep TOML; None: the shipped sweeps/<family>.toml, else sweeps/default.toml."""
    presets_dir: Path | None = None
    """Plans to compare against and to queue as the first trials; None: the shipped presets
    (`strategies/presets`, see `resbench.resources`)."""
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
    screen_fraction: float | None = 0.10
    """With device cuda: plans the simulator finds short even at the budget plus this share
    are recorded infeasible without a GPU run; None measures every plan."""


class NoFeasiblePlanError(DoesNotFitError):
    """No trial fitted the budget; `min_budget_bytes` estimates the smallest that would."""


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during the study: the finished trials are kept in the storage. `complete` and
    `failed` count the study's trials in those states (every worker's), after the trial cut
    short was marked FAIL."""

    def __init__(self, study_name: str, storage: str, *, complete: int, failed: int) -> None:
        super().__init__(study_name)
        self.study_name = study_name
        self.storage = storage
        self.complete = complete
        self.failed = failed

    @property
    def finished(self) -> int:
        return self.complete + self.failed


def tune(options: TuneOptions, *, callbacks: Iterable[Callback] = (),
         log: Callable[[str], None] = lambda _line: None,
         schedule: Schedule | None = None) -> TuneResult:
    """Run the search; see the module docstring. `schedule`: a recording to reuse (it must
    match the options' model, request and scale).

    Raises `InputError` (bad options, sweep, storage), `NoFeasiblePlanError` (nothing fits),
    `TuneInterrupted` (Ctrl-C; the study keeps its finished trials).
    """
    with ExitStack() as cleanup:  # the GPU backend's weights go back on every way out
        return _tune(options, callbacks, log, schedule, cleanup)


def _tune(options: TuneOptions, callbacks: Iterable[Callback], log: Callable[[str], None],
          schedule: Schedule | None, cleanup: ExitStack) -> TuneResult:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = get_model(options.model)
    request = Request.for_model(spec, **options.request)
    engine = make_engine(options.engine, spec, scale=options.scale)
    profile = resolve_hardware(options.hardware)
    budget = _check_budget(options.budget_bytes, profile, log)
    host_budget = options.host_budget_bytes or profile.host_ram_bytes
    log(f"host budget (pinned) {describe_bytes(host_budget)}")
    pareto = _check_objectives(options.objectives)
    sampler_name = options.sampler or ("nsga2" if pareto else "tpe")
    if sampler_name not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler_name!r}; valid: {', '.join(SAMPLERS)}")
    sweep_file = options.sweep or sweep_path(spec.family)
    sweep = load_sweep(sweep_file)
    if options.device not in ("sim", "cuda"):
        raise InputError(f"device must be sim or cuda, got {options.device!r}")
    if options.device == "cuda" and (why := cuda_unavailable()):
        raise InputError(f"--device cuda cannot run: {why}; use --device sim")

    name = options.study_name or study_name(
        spec.name, profile.name, budget, request, scale=options.scale, pareto=pareto,
        sweep=None if options.sweep is None else Path(options.sweep).stem,
        host_budget_bytes=options.host_budget_bytes, measured=options.device == "cuda",
        engine=engine.name)
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
    constraints = study_constraints(spec.name, request, profile, budget, host_budget,
                                    options.scale, sweep_file, options.device, engine.name)
    check_constraints(study, constraints)
    if "model" not in study.user_attrs:  # what the study searches for, for reports
        for key, value in {"model": spec.name, "engine": engine.name,
                           "request": dataclasses.asdict(request),
                           "hardware": profile.name, "hardware_profile": profile_dict(profile),
                           "budget_bytes": budget, "scale": options.scale,
                           "host_budget_bytes": host_budget, "sweep": str(sweep_file)}.items():
            study.set_user_attr(key, value)

    if schedule is None:
        log(f"recording the schedule of {spec.name} at {_request_text(request)}")
        schedule = engine.record(request)
        if options.device == "sim" and not options.validate:
            # A merged LoRA's copy (LTX-2's stage 2) is the simulator's to plan: the real
            # diffusers run of that stage merges none yet (`Engine.merged_refine`).
            schedule = engine.merged_refine(schedule)
    space = sweep.bind(schedule)
    weights = sum(u.weight_bytes for u in schedule.units)
    if options.host_budget_bytes is not None and options.host_budget_bytes < weights:
        # the whole model cannot be pinned: every pinned plan pins what the budget holds,
        # the units copied most first, the rest pageable (priced so by the simulator)
        space = dataclasses.replace(space, pinned_budget_bytes=options.host_budget_bytes)
        log(f"host budget below the model's {describe_bytes(weights)}: pinned plans pin the "
            "units copied most within it, the rest stays pageable")
    gpu = (cleanup.enter_context(closing(make_backend(
        "cuda", spec, request, profile=profile, scale=options.scale, schedule=schedule,
        engine=engine))) if options.device == "cuda" else None)
    evaluator = Evaluator(schedule, profile, budget_bytes=budget, host_budget_bytes=host_budget,
                          backend=gpu, screen_fraction=options.screen_fraction)
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

    # A resumed study: fail the trials that workers which died left RUNNING.
    stale = StaleTrials(log=log)
    stale.sweep(study)
    interrupts = Interrupts()
    objective = Objective(space, evaluator, pareto=pareto, interrupts=interrupts)
    log(f"searching {space.source} with {sampler_name}: "
        + (f"{options.n_trials} trials" if options.n_trials else "")
        + (f" (at most {options.timeout_s:g} s)" if options.timeout_s else ""))
    ran: list[int] = []  # trials this call finished (other workers may add theirs)
    try:
        with interrupts.held(study), StaleWatch(study, stale):
            study.optimize(objective, n_trials=options.n_trials, timeout=options.timeout_s,
                           callbacks=[lambda _s, t: ran.append(t.number), *callbacks])
        if interrupts.pending:
            raise KeyboardInterrupt
        trials = _settled_trials(study, ran, log, stale=stale)
    except KeyboardInterrupt:
        raise _interrupted(study, name, storage_url) from None

    feasible = [t for t in trials if _feasible(t)]
    if not feasible:
        raise _no_feasible(trials, space, evaluator, baselines, name)
    ranked = sorted(feasible, key=lambda t: t.values[0])
    capacity = evaluator.sim_capacity(budget)
    best_trial = _first_that_still_fits(ranked, evaluator, capacity, log)
    if best_trial is None:
        raise _no_feasible([], space, evaluator, baselines, name)
    best = _evaluation(best_trial, capacity)
    validation: tuple[Validation, ...] = ()
    note = "simulated" if options.device == "sim" else "measured on the GPU"
    if options.validate and options.device == "sim":
        best, validation, note, baselines, all_resident = _validate(
            ranked, options, spec, request, profile, schedule, budget, capacity, best,
            baselines, all_resident, log, engine)
    elif options.validate:
        note = "measured on the GPU (--validate not needed)"
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
        result_note=note, min_budget_bytes=min_budget_bytes(schedule, profile),
        last_gain_trial=last_gain((t.number, t.values[0]) for t in feasible))


def _settled_trials(study: optuna.Study, ran: list[int], log: Callable[[str], None], *,
                    poll_s: float = 0.5, stale: StaleTrials | None = None,
                    ) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials once no trial of another worker is still running.

    Several workers share a study: one that finishes its trials first must not declare
    "no plan fits" (or pick a best) while another worker's trial — perhaps the only
    feasible one — is still running. Trials left RUNNING by workers that died are failed
    meanwhile (`liveness.StaleTrials`), so the wait ends."""
    running = optuna.trial.TrialState.RUNNING
    stale = stale or StaleTrials(log=log)
    told = False
    while True:
        stale.sweep(study)
        others = [t for t in study.get_trials(deepcopy=False, states=(running,))
                  if t.number not in ran]
        if not others:
            return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not told:
            log(f"waiting for {len(others)} trial(s) other workers are running")
            told = True
        time.sleep(poll_s)


def _interrupted(study: optuna.Study, name: str, storage_url: str) -> TuneInterrupted:
    """The error for Ctrl-C: this process's trial cut short is FAIL (optuna marks it so
    when the interrupt reaches the objective; `fail_own_trials` when it reached optuna's
    own bookkeeping), and the counts are read back after that."""
    fail_own_trials(study)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TuneInterrupted(name, storage_url,
                           complete=states.count(optuna.trial.TrialState.COMPLETE),
                           failed=states.count(optuna.trial.TrialState.FAIL))


def _first_that_still_fits(ranked: list[optuna.trial.FrozenTrial], evaluator: Evaluator,
                           capacity: int, log: Callable[[str], None]
                           ) -> optuna.trial.FrozenTrial | None:
    """The best trial whose plan fits this run's budgets when scored again now.

    A trial's constraints were judged under the budgets of the run that made it; the
    study's recorded constraints keep them equal (`check_constraints`), and this re-check
    is the last guard before a plan is written: a plan that does not fit is never the
    answer. Measured trials are re-checked on their stored figures (a new GPU run would
    take as long as the trial)."""
    for t in ranked:
        ev = _evaluation(t, capacity)
        if ev.measured:
            if ev.feasible(evaluator.host_budget_bytes):
                return t
            continue
        again = evaluator.evaluate(ev.plan)
        if again.feasible(evaluator.host_budget_bytes):
            return t
        log(f"trial {t.number} no longer fits this run's budgets; skipping it")
    return None


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


def _baselines(folder: Path | None, space: SearchSpace, evaluator: Evaluator,
               spec: ModelSpec) -> list[Baseline]:
    # the schedule's kinds too: it may hold a component the spec lacks (a merged LoRA copy)
    kinds: dict[str, str] = {c.name: c.kind for c in spec.components} | evaluator.schedule.kinds
    out = []
    for plan in load_presets(folder).values():
        try:
            plan.check_components(kinds, source=plan.name)
            plan.check_merges(evaluator.schedule.merged, kinds, source=plan.name)
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
                      measured=a.get("measured", False),
                      cold_latency_s=a.get("cold_latency_s"))


def _no_feasible(trials: list[optuna.trial.FrozenTrial], space: SearchSpace,
                 evaluator: Evaluator, baselines: list[Baseline], name: str) -> NoFeasiblePlanError:
    """The error for a study without a feasible trial. It quotes the smallest budget any
    plan fits in (`analysis.budget.min_budget_bytes`, the figure `profile` quotes too) and,
    when the sweep cannot reach it, what the sweep's most frugal plan needs."""
    budget = evaluator.budget_bytes
    smallest = min_budget_bytes(evaluator.schedule, evaluator.profile,
                                call_times_s=evaluator.call_times_s)
    space_floor = evaluator.needed_budget(space.frugal_plan())
    host_bound = any(t.constraints.get("peak_device", 1) <= 0 for t in trials)
    msg = (f"no plan fits {format_bytes(budget)} on {evaluator.profile.name} "
           f"({len(trials)} complete trials in study {name})")
    if smallest > budget:
        msg += f"; the smallest budget any plan fits in is {format_bytes(smallest)}"
    elif space_floor is not None and space_floor > budget:
        msg += (f"; plans exist that fit (from {format_bytes(smallest)}), but this sweep's most "
                f"frugal plan needs {format_bytes(space_floor)}: widen the sweep (--sweep)")
    elif host_bound:
        msg += (f"; some fit the device but pin more than the host budget of "
                f"{format_bytes(evaluator.host_budget_bytes)} (raise --host-budget)")
    else:
        msg += "; run more trials (--n-trials)"
    return NoFeasiblePlanError(msg, missing_bytes=max(0, smallest - budget),
                               min_budget_bytes=smallest)


def _validate(ranked: list[optuna.trial.FrozenTrial], options: TuneOptions, spec: ModelSpec,
              request: Request, profile: HardwareProfile, schedule: Schedule, budget: int,
              capacity: int, best: Evaluation, baselines: list[Baseline],
              all_resident: Evaluation, log: Callable[[str], None], engine: Engine,
              ) -> tuple[Evaluation, tuple[Validation, ...], str, list[Baseline], Evaluation]:
    """Re-run the best `options.validate` simulated plans on the GPU — and, in the same
    process on the same card, every preset that fits and all-resident on the whole card,
    so the tuned plan is compared with measured figures only."""
    why = cuda_unavailable()
    if why:
        log(f"--validate {options.validate}: {why}; the result is simulated")
        return best, (), f"simulated ({why}: not validated)", baselines, all_resident
    gpu = make_backend("cuda", spec, request, profile=profile, scale=options.scale,
                       schedule=schedule, engine=engine)
    try:
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
            real = _measure(gpu, sim, budget)
            rows.append(Validation(t.number, sim.latency_s,
                                   real.latency_s if real.fits else None,
                                   "" if real.fits else f"out of memory ({real.missing_bytes} B short)"))
            if real.fits and (best_real is None or real.latency_s < best_real.latency_s):
                best_real = real
        measured: list[Baseline] = []
        for b in baselines:
            if b.evaluation is not None and b.evaluation.fits:
                log(f"measuring preset {b.name} on the GPU")
                b = dataclasses.replace(b, evaluation=_measure(gpu, b.evaluation, budget))
            measured.append(b)
        if all_resident.fits:
            log("measuring all-resident on the whole card")
            all_resident = _measure(gpu, all_resident, None)
    finally:
        gpu.close()
    if best_real is None:
        return (best, tuple(rows), "simulated (no validated plan ran on the GPU)", measured,
                all_resident)
    return (best_real, tuple(rows), f"measured on the GPU (best of {len(rows)} validated)",
            measured, all_resident)


def _measure(gpu: Backend, ev: Evaluation, budget: int | None) -> Evaluation:
    """`ev`'s plan measured on the GPU under `budget` (None: the whole card); an allocator
    out-of-memory is a plan that does not fit, recorded as such."""
    try:
        r = gpu.run(ev.plan, budget)
    except DoesNotFitError as exc:
        return dataclasses.replace(ev, fits=False, latency_s=INFEASIBLE_LATENCY_S,
                                   missing_bytes=max(1, exc.missing_bytes or 0), measured=True,
                                   failed_at=f"{exc.component}.{exc.unit}" if exc.component
                                   else None, failure=str(exc))
    return dataclasses.replace(ev, latency_s=r.latency_s, stall_s=r.stall_s,
                               peak_device_bytes=r.peak_device_bytes,
                               pinned_host_bytes=r.pinned_host_bytes, h2d_bytes=r.h2d_bytes,
                               d2h_bytes=r.d2h_bytes, measured=True,
                               cold_latency_s=r.cold_latency_s)
