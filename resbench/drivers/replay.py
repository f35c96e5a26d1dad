"""`ReplayDriver`: walks a recorded schedule through the residency manager, no torch work.

On a `SimDevice` each unit call (and adapter merge) costs what the `CostModel` says on the
hardware profile, and
the manager makes exactly the decisions it would make on the real card. `simulate` is the
simulator's one-line entry point (`resbench.execution.execute` on a fresh `SimDevice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from resbench.cost import CostModel
from resbench.devices.sim import SimDevice
from resbench.hardware import HardwareProfile
from resbench.residency.manager import ResidencyManager
from resbench.residency.plan import Plan
from resbench.schedule import Schedule
from resbench.trace import Tracer

if TYPE_CHECKING:
    from resbench.execution import RunResult


class ReplayDriver:
    """Drives `manager` over its schedule: setup, then every call in order, stage by stage."""

    def __init__(self, manager: ResidencyManager) -> None:
        self.manager = manager
        self.cursor = 0

    def run(self, request: Any = None, *, requests: int = 1) -> None:
        """Setup, then `requests` requests back to back on the same device (the steady
        state of a plan that keeps weights from one request to the next)."""
        mgr = self.manager
        mgr.setup()
        for _ in range(requests):
            self._request()
        mgr.tracer.finalize(mgr.device.resolve)

    def _request(self) -> None:
        mgr = self.manager
        self.cursor = 0
        mgr.request_start()
        stage = None
        begin, end = mgr.unit_begin, mgr.unit_end
        for call in mgr.schedule.calls:
            if call.stage != stage:
                if stage is not None:
                    mgr.stage_exit(stage)
                stage = call.stage
                mgr.stage_enter(stage)
            self.cursor += 1
            begin(call)
            end(call)
        if stage is not None:
            mgr.stage_exit(stage)
        mgr.request_end()


def sim_device(schedule: Schedule, profile: HardwareProfile, *, capacity_bytes: int | None = None,
               call_times_s: Sequence[float] | None = None) -> SimDevice:
    """A `SimDevice` for `schedule` on `profile` (`capacity_bytes`: the budget; None: the card)."""
    cost = CostModel(profile)
    times = call_times_s if call_times_s is not None else cost.call_times(schedule.calls)
    unit_bytes = {(u.component, u.name): u.weight_bytes for u in schedule.units}
    return SimDevice(profile, unit_bytes=unit_bytes, call_times_s=times,
                     capacity_bytes=capacity_bytes, state_bytes=schedule.state_bytes,
                     merge_times_s=[cost.merge_time_s(m) for m in schedule.merges])


def simulate(schedule: Schedule, plan: Plan, profile: HardwareProfile, *,
             capacity_bytes: int | None = None, tracer: Tracer | None = None,
             call_times_s: Sequence[float] | None = None,
             steady_state: bool | None = None) -> RunResult:
    """Score `plan` on `schedule` and `profile`; raises `DoesNotFitError` if it cannot fit.
    `steady_state`: score the second of two back-to-back requests (None: when the plan
    keeps weights across requests; see `resbench.execution.execute`)."""
    from resbench.execution import execute

    device = sim_device(schedule, profile, capacity_bytes=capacity_bytes, call_times_s=call_times_s)
    return execute(schedule, plan, device, tracer=tracer or Tracer(enabled=False),
                   steady_state=steady_state)
