"""`ReplayDriver`: drives the residency manager over a recorded schedule on a `SimDevice`.

No torch work happens: each unit call costs what the `CostModel` says on the hardware
profile, and the manager makes exactly the decisions it would make on the real card.
`simulate` is the one call the tuner and `resbench profile --device sim` use.
"""

from __future__ import annotations

from dataclasses import dataclass

from resbench.cost import CostModel
from resbench.devices.sim import SimDevice
from resbench.hardware import HardwareProfile
from resbench.residency.manager import ResidencyManager
from resbench.residency.plan import Plan
from resbench.schedule import Schedule
from resbench.trace import Tracer


@dataclass(frozen=True, slots=True)
class SimResult:
    """Outcome of one simulated request (seconds and bytes)."""

    latency_s: float
    setup_s: float
    compute_s: float
    stall_s: float
    h2d_bytes: int
    d2h_bytes: int
    peak_device_bytes: int
    pinned_host_bytes: int
    capacity_bytes: int


class ReplayDriver:
    def __init__(self, schedule: Schedule, plan: Plan, profile: HardwareProfile, *,
                 capacity_bytes: int | None = None, tracer: Tracer | None = None,
                 call_times_s: list[float] | None = None) -> None:
        self.schedule = schedule
        times = call_times_s if call_times_s is not None else CostModel(profile).call_times(schedule.calls)
        unit_bytes = {(u.component, u.name): u.weight_bytes for u in schedule.units}
        self.device = SimDevice(profile, unit_bytes=unit_bytes, call_times_s=times,
                                capacity_bytes=capacity_bytes, state_bytes=schedule.state_bytes)
        self.manager = ResidencyManager(schedule, plan, self.device, kinds=schedule.kinds,
                                        tracer=tracer or Tracer())

    def run(self) -> SimResult:
        mgr, dev = self.manager, self.device
        mgr.setup()
        setup_s = dev.compute_t
        mgr.request_start()
        start = dev.compute_t
        stage = None
        begin, end = mgr.unit_begin, mgr.unit_end
        for call in self.schedule.calls:
            if call.stage != stage:
                if stage is not None:
                    mgr.stage_exit(stage)
                stage = call.stage
                mgr.stage_enter(stage)
            begin(call)
            end(call)
        if stage is not None:
            mgr.stage_exit(stage)
        mgr.request_end()
        latency = dev.compute_t - start
        mgr.tracer.finalize(dev.resolve)
        return SimResult(latency_s=latency, setup_s=setup_s, compute_s=dev.busy_compute_s,
                         stall_s=max(0.0, latency - dev.busy_compute_s), h2d_bytes=mgr.h2d_bytes,
                         d2h_bytes=mgr.d2h_bytes, peak_device_bytes=dev.peak_bytes(),
                         pinned_host_bytes=dev.pinned_bytes(),
                         capacity_bytes=dev.ledger.capacity_bytes)


def simulate(schedule: Schedule, plan: Plan, profile: HardwareProfile, *,
             capacity_bytes: int | None = None, tracer: Tracer | None = None,
             call_times_s: list[float] | None = None) -> SimResult:
    """Score `plan` on `schedule` and `profile`; raises `DoesNotFitError` if it cannot fit."""
    return ReplayDriver(schedule, plan, profile, capacity_bytes=capacity_bytes, tracer=tracer,
                        call_times_s=call_times_s).run()
