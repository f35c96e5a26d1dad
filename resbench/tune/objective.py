"""The tuning objective: score a plan under a budget, and the constraints optuna sees.

`Evaluator` holds what every trial shares — the schedule (recorded once per tune), the
`CostModel` call times (computed once) and the budgets — and turns a `Plan` into an
`Evaluation`. `Objective` is the optuna callable around it. A plan that keeps weights on the
device from one request to the next (layerwise `keep_resident`) is scored on the steady
state: the second of two back-to-back requests, with memory checked over both
(`resbench.execution.execute`); every other plan on one request, as before.

Constraints (optuna 5 `trial.set_constraint`; feasible when ≤ 0):

* ``peak_device = peak + margin - capacity`` where `capacity` is the budget the simulator
  enforces (the budget less the profile's fragmentation share) and `margin` the plan's
  `buffer_margin_bytes` under the dynamic policy (0 otherwise): a dynamic plan must really
  leave the headroom it promises.
* ``pinned_host = pinned - host_budget``.

A plan that does not fit at all (the simulator raises `DoesNotFitError`) is an infeasible
trial, never a crash: both numbers above are still set, `peak_device` to the missing bytes
plus the margin (always > 0), and the objective returns `INFEASIBLE_LATENCY_S`, a large
finite penalty (optuna's samplers rank infeasible trials by their constraint violation, so
the penalty only keeps plots and `trials_dataframe` finite). The smallest budget the plan
would fit in is estimated from a run of its static version without a budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from resbench.analysis.budget import needed_budget_bytes
from resbench.cost import CostModel
from resbench.drivers.replay import simulate
from resbench.errors import DoesNotFitError
from resbench.execution import Backend, RunResult
from resbench.hardware import HardwareProfile
from resbench.residency.pinning import pinned_units
from resbench.residency.plan import Plan
from resbench.schedule import Schedule
from resbench.trace import Tracer
from resbench.tune.interrupts import Interrupts
from resbench.tune.liveness import WORKER_ATTR, worker_id
from resbench.tune.space import SearchSpace

INFEASIBLE_LATENCY_S = 1.0e6
"""Objective value of a plan that does not fit: finite, far above any real latency."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """One plan scored under one budget. Seconds and bytes; `fits` False: the run failed."""

    plan: Plan
    fits: bool
    latency_s: float
    """The request's latency; `INFEASIBLE_LATENCY_S` when the plan does not fit."""
    peak_device_bytes: int
    pinned_host_bytes: int
    stall_s: float | None = None
    """Seconds compute waited for copies; None when the run did not measure it."""
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    capacity_bytes: int = 0
    """Bytes the run was allowed (the budget less fragmentation)."""
    missing_bytes: int = 0
    """Bytes short when the plan did not fit (0 when the allocator did not say)."""
    failed_at: str | None = None
    """`component.unit` being placed or run when the plan did not fit."""
    failure: str = ""
    """Why it did not fit, in a line (device or host memory), when known."""
    needed_budget_bytes: int | None = None
    """Smallest budget this plan (static version) is estimated to fit in; set when it did not."""
    measured: bool = False
    """True for a real run on the GPU, False for the simulator."""
    screened: bool = False
    """True when the plan was not run on the GPU because the simulator found it short of
    memory even at the budget plus the screen margin (`Evaluator.screen_fraction`)."""
    cold_latency_s: float | None = None
    """For a plan that keeps weights across requests (`steady_state`), the first, cold
    request's latency; `latency_s` is then the second's."""

    @property
    def steady_state(self) -> bool:
        """The latency is the second of two back-to-back requests (the plan keeps weights on
        the device between requests: `Plan.keeps_across_requests`), the peak over both."""
        return self.plan.keeps_across_requests

    @property
    def margin_bytes(self) -> int:
        return self.plan.buffer_margin_bytes if self.plan.policy == "dynamic" else 0

    @property
    def peak_violation_bytes(self) -> int:
        if not self.fits:
            return max(1, self.missing_bytes) + self.margin_bytes
        return self.peak_device_bytes + self.margin_bytes - self.capacity_bytes

    def pinned_violation_bytes(self, host_budget_bytes: int) -> int:
        return self.pinned_host_bytes - host_budget_bytes

    def feasible(self, host_budget_bytes: int) -> bool:
        return (self.fits and self.peak_violation_bytes <= 0
                and self.pinned_violation_bytes(host_budget_bytes) <= 0)

    def user_attrs(self) -> dict[str, Any]:
        """What a trial stores for the dashboard and for rebuilding the result later (few
        keys: each is one write to the storage)."""
        attrs: dict[str, Any] = {
            "plan_toml": self.plan.to_toml(), "plan_id": plan_id(self.plan), "fits": self.fits,
            "peak_device_bytes": self.peak_device_bytes,
            "pinned_host_bytes": self.pinned_host_bytes,
        }
        if self.fits:
            attrs.update(latency_s=self.latency_s, h2d_bytes=self.h2d_bytes,
                         d2h_bytes=self.d2h_bytes)
            if self.stall_s is not None:  # absent, never 0, when not measured
                attrs["stall_s"] = self.stall_s
            if self.cold_latency_s is not None:
                attrs["cold_latency_s"] = self.cold_latency_s
        else:
            attrs.update(missing_bytes=self.missing_bytes, failed_at=self.failed_at,
                         failure=self.failure or None,
                         needed_budget_bytes=self.needed_budget_bytes)
        if self.measured:
            attrs["measured"] = True
        if self.screened:
            attrs["screened"] = True
        return attrs


def plan_id(plan: Plan) -> str:
    """Hash of the plan's canonical form (keys sorted, sizes in bytes; name left out)."""
    doc = plan.to_dict()
    doc.pop("name", None)
    doc.pop("description", None)
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


class Evaluator:
    """Scores plans for one schedule, hardware profile and budget.

    `budget_bytes` is the device memory the plan may use (the emulated card); the
    simulator also subtracts the profile's fragmentation share from it.
    """

    def __init__(self, schedule: Schedule, profile: HardwareProfile, *, budget_bytes: int,
                 host_budget_bytes: int, backend: Backend | None = None,
                 screen_fraction: float | None = None) -> None:
        """`backend`: where trials run (`resbench.execution`); None: the simulator.

        `screen_fraction`: with a measuring backend, a plan the simulator finds short of
        memory even at `budget × (1 + screen_fraction)` is recorded infeasible without
        running it (`Evaluation.screened`); None runs every plan. The margin is there
        because the simulator's fit line is not exact near the budget (issue 14)."""
        self.schedule = schedule
        self.screen_fraction = screen_fraction
        self.profile = profile
        self.budget_bytes = budget_bytes
        self.host_budget_bytes = host_budget_bytes
        self.call_times_s = CostModel(profile).call_times(schedule.calls)
        self.backend = backend
        self.measured = backend is not None and backend.measured

    def run(self, plan: Plan, capacity_bytes: int | None) -> RunResult:
        if self.backend is not None:
            return self.backend.run(plan, capacity_bytes)
        return simulate(self.schedule, plan, self.profile, capacity_bytes=capacity_bytes,
                        tracer=Tracer(enabled=False), call_times_s=self.call_times_s)

    def evaluate(self, plan: Plan, *, full_card: bool = False) -> Evaluation:
        """Score `plan` under the budget (or on the whole card with `full_card`)."""
        capacity = None if full_card else self.budget_bytes
        allowed = self.sim_capacity(capacity)
        if not full_card and (screened := self.screen(plan, allowed)) is not None:
            return screened
        try:
            r = self.run(plan, capacity)
        except DoesNotFitError as exc:
            return Evaluation(plan=plan, fits=False, latency_s=INFEASIBLE_LATENCY_S,
                              peak_device_bytes=allowed + exc.missing_bytes,
                              pinned_host_bytes=self.pinned_estimate(plan),
                              capacity_bytes=allowed, missing_bytes=exc.missing_bytes,
                              failed_at=(f"{exc.component}.{exc.unit}" if exc.component
                                         else None), failure=str(exc),
                              needed_budget_bytes=self.needed_budget(plan),
                              measured=self.measured)
        return Evaluation(plan=plan, fits=True, latency_s=r.latency_s,
                          peak_device_bytes=r.peak_device_bytes,
                          pinned_host_bytes=r.pinned_host_bytes, stall_s=r.stall_s,
                          h2d_bytes=r.h2d_bytes, d2h_bytes=r.d2h_bytes, capacity_bytes=allowed,
                          measured=self.measured, cold_latency_s=r.cold_latency_s)

    def screen(self, plan: Plan, allowed_bytes: int) -> Evaluation | None:
        """The infeasible `Evaluation` of a plan not worth a GPU run, else None."""
        if not self.measured or self.screen_fraction is None:
            return None
        wide = min(int(self.budget_bytes * (1.0 + self.screen_fraction)),
                   self.profile.usable_bytes)
        try:
            simulate(self.schedule, plan, self.profile, capacity_bytes=wide,
                     tracer=Tracer(enabled=False), call_times_s=self.call_times_s)
        except DoesNotFitError as exc:
            short = f"{exc.missing_bytes / 1e9:.2f} GB short" if exc.missing_bytes else "short"
            missing = exc.missing_bytes + max(0, wide - allowed_bytes)  # at least, at the budget
            return Evaluation(
                plan=plan, fits=False, latency_s=INFEASIBLE_LATENCY_S,
                peak_device_bytes=allowed_bytes + missing,
                pinned_host_bytes=self.pinned_estimate(plan), capacity_bytes=allowed_bytes,
                missing_bytes=missing,
                failed_at=f"{exc.component}.{exc.unit}" if exc.component else None,
                failure=(f"not run on the GPU: the simulator finds it {short} even at "
                         f"{wide / 1e9:.2f} GB (the budget + {self.screen_fraction:.0%})"),
                needed_budget_bytes=self.needed_budget(plan), screened=True)
        return None

    def sim_capacity(self, capacity_bytes: int | None) -> int:
        """Bytes a run may fill: the simulator takes the fragmentation share off the budget;
        on the GPU the allocator's own fragmentation is in the measured peak."""
        cap = self.profile.usable_bytes if capacity_bytes is None else capacity_bytes
        if self.measured or self.profile.allocator_large_buffer_bytes:
            return cap  # the caching allocator's model is the fragmentation (devices.sim)
        return int(cap * (1.0 - self.profile.fragmentation_fraction))

    def needed_budget(self, plan: Plan) -> int | None:
        """Smallest budget `plan` would fit in (`analysis.budget.needed_budget_bytes`).
        Always simulated, even when trials run on the GPU."""
        return needed_budget_bytes(self.schedule, plan, self.profile,
                                   call_times_s=self.call_times_s)

    def pinned_estimate(self, plan: Plan) -> int:
        """Host bytes `plan` pins, without running it: the manager's own rule, `pinned_units`."""
        return sum(u.weight_bytes for u in pinned_units(plan, self.schedule))

    def lower_bound_s(self) -> float:
        """No plan under this budget can beat max(total compute, must-move bytes / H2D
        bandwidth): weights that do not fit beside the request state must be copied in at
        least once during the request."""
        compute = sum(self.call_times_s)
        weights = sum(u.weight_bytes for u in self.schedule.units)
        room = self.sim_capacity(self.budget_bytes) - self.schedule.state_bytes
        must_move = max(0, weights - room)
        return max(compute, must_move / self.profile.h2d_pinned_bytes_per_s)


class Objective:
    """optuna objective: suggest a plan, score it, set constraints and user attributes.

    Returns the latency, or (latency, peak device bytes) when `pareto` is set.
    """

    def __init__(self, space: SearchSpace, evaluator: Evaluator, *, pareto: bool = False,
                 interrupts: Interrupts | None = None) -> None:
        """`interrupts`: where Ctrl-C may cut a trial short (`resbench.tune.interrupts`)."""
        self.space = space
        self.evaluator = evaluator
        self.pareto = pareto
        self.interrupts = interrupts or Interrupts()

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        # First, so that a trial whose process dies is known to be dead
        # (`resbench.tune.liveness`); workers on several hosts share one study.
        trial.set_user_attr(WORKER_ATTR, worker_id())
        plan = self.space.suggest(trial)
        with self.interrupts.scoring():
            ev = self.evaluator.evaluate(plan)
        record(trial, ev, self.evaluator.host_budget_bytes)
        if self.pareto:
            return ev.latency_s, float(ev.peak_device_bytes)
        return ev.latency_s


def record(trial: Any, ev: Evaluation, host_budget_bytes: int) -> None:
    """Set the two constraints and the user attributes of `trial` from `ev`."""
    trial.set_constraint("peak_device", float(ev.peak_violation_bytes))
    trial.set_constraint("pinned_host", float(ev.pinned_violation_bytes(host_budget_bytes)))
    for key, value in ev.user_attrs().items():
        if value is not None:
            trial.set_user_attr(key, value)
