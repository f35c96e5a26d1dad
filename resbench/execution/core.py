"""`execute`: the one way resbench runs a plan — simulated, on the CPU device, or on the GPU.

An `Execution` puts a schedule, a plan and a `Device` under one `ResidencyManager` and picks
the driver: a real forward pass (`TorchDriver`) when a pipeline is given, else a replay of
the schedule (`ReplayDriver`). It runs one request and returns a `RunResult` — or, for a plan
that keeps weights on the device from one request to the next
(`Plan.keeps_across_requests`: layerwise `keep_resident`), the steady state: two requests
back to back on one setup, the second's latency, bytes and compute reported, the peaks over
both (the kept blocks meet the second request's text encoders, which one request never
shows), so such a plan is never scored on a cold start it does not pay in service, nor on
a memory peak it skips. Nothing here
asks which device it holds: the device's lifecycle methods (setup bracket, clock, close)
are no-ops where a device has nothing to do.

Figures a run cannot know are `None`, never 0: a real device without a trace does not know
how long its compute stream was busy, so its `compute_s` and `stall_s` are `None`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from resbench.devices.base import Device
from resbench.drivers.replay import ReplayDriver
from resbench.errors import DeviceOOMError, DoesNotFitError
from resbench.models.base import REST
from resbench.pipeline import ManagedPipeline, Request
from resbench.residency.manager import ResidencyManager
from resbench.residency.plan import Plan
from resbench.residency.strategies import LayerwiseConfig
from resbench.schedule import Schedule
from resbench.trace import Tracer
from resbench.units import format_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One request run under one plan. Seconds and bytes; `None`: not known for this run."""

    plan_name: str
    device_kind: str
    """"sim", "cpu" or "cuda" (a label: what the numbers are, simulated or measured)."""
    measured: bool
    """True when the latency is a real clock's (cpu, cuda), False for the simulator."""
    latency_s: float
    """From request start to its output being ready, on the device's clock."""
    setup_s: float
    """Loads before the request (resident units), excluded from `latency_s`."""
    compute_s: float | None
    """Seconds the compute stream was busy during the request."""
    stall_s: float | None
    """Seconds compute waited for copies."""
    h2d_bytes: int
    d2h_bytes: int
    peak_device_bytes: int
    """Peak device memory: the ledger (simulator, CPU device) or the allocator's allocated bytes."""
    peak_reserved_bytes: int | None
    """Peak bytes the CUDA caching allocator reserved; None elsewhere."""
    ledger_peak_bytes: int
    pinned_host_bytes: int
    capacity_bytes: int
    """Device bytes the run was allowed to fill (the simulator's budget net of fragmentation)."""
    steady_state: bool = False
    """True: the figures are the second of two back-to-back requests on one setup (latency,
    bytes, compute, stall, the trace's per-stage figures), the peaks over both."""
    cold_latency_s: float | None = None
    """With `steady_state`, the first (cold) request's latency; None otherwise."""
    stage_latency_s: dict[str, float] = field(default_factory=dict)
    h2d_stream_bytes: int = 0
    """Bytes streamed by layerwise components (their blocks) during the request."""
    h2d_stream_bytes_per_s: float | None = None
    """Those bytes over the seconds their copies were in flight (None: nothing streamed, or no trace)."""
    trace: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    output: torch.Tensor | None = field(default=None, repr=False, compare=False)


class Execution:
    """One request of `schedule` under `plan` on `device` (a device serves one execution).

    `pipeline`: run it for real (its components must be the ones `device` manages);
    None: replay the schedule (the simulator). `manager` and `driver` stay readable after
    `run` for tests and analyses.
    """

    def __init__(self, schedule: Schedule, plan: Plan, device: Device, *,
                 pipeline: ManagedPipeline | None = None, tracer: Tracer | None = None) -> None:
        from resbench.drivers.torch_driver import TorchDriver

        self.schedule = schedule
        self.plan = plan
        self.device = device
        self.tracer = tracer if tracer is not None else Tracer()
        self.manager = ResidencyManager(schedule, plan, device, kinds=schedule.kinds,
                                        tracer=self.tracer)
        self.pipeline = pipeline
        self.driver: Any = (ReplayDriver(self.manager) if pipeline is None
                            else TorchDriver(pipeline, self.manager))

    def run(self, request: Request | None = None, *, keep_output: bool = False,
            steady_state: bool | None = None) -> RunResult:
        """Run the request; the device is closed afterwards whatever happens.

        `steady_state`: run it twice back to back and report the second (None: when the
        plan keeps weights across requests, `Plan.keeps_across_requests`); `keep_output`
        keeps the last request's output.

        Raises `DoesNotFitError` (the plan needs more than the budget) or `DeviceOOMError`
        (the device's allocator ran out, naming the unit that was running; memory freed),
        in either request."""
        device, mgr = self.device, self.manager
        steady = self.plan.keeps_across_requests if steady_state is None else steady_state
        out_of_memory = False
        try:
            try:
                output = self.driver.run(request, requests=2 if steady else 1)
            except torch.OutOfMemoryError:
                out_of_memory = True
            except DoesNotFitError as exc:
                self._in_second_request(exc)
                raise
            if out_of_memory:
                # raised outside the handler: the OOM's traceback (and the activations its
                # frames hold) is gone before `close` empties the allocator's cache
                # a component's own cache of activations (the Wan VAE's causal-conv feature
                # cache) would otherwise hold GBs into the next run on the same modules
                clear_component_caches(self.pipeline)
                raise self._in_second_request(self._oom())
            peak = device.peak_bytes()
            reserved = device.peak_reserved_bytes()
            ledger_peak = device.ledger_peak_bytes()
            busy = mgr.request_busy_s if steady else device.compute_busy_s()
            kept = output.detach().float().cpu() if keep_output and output is not None else None
            del output
        finally:
            device.close()
        frame = self.tracer.frame() if self.tracer.enabled else None
        figures = _trace_figures(frame, self.plan, self.schedule) if frame is not None else {}
        compute = busy if busy is not None else figures.get("compute_s")
        if busy is not None:
            stall: float | None = max(0.0, mgr.latency_s - busy)
        else:
            stall = figures.get("stall_s")
        h2d, d2h = ((mgr.request_h2d_bytes, mgr.request_d2h_bytes) if steady
                    else (mgr.h2d_bytes, mgr.d2h_bytes))
        return RunResult(
            plan_name=self.plan.name, device_kind=device.kind, measured=device.kind != "sim",
            latency_s=mgr.latency_s, setup_s=mgr.setup_s, compute_s=compute, stall_s=stall,
            h2d_bytes=h2d, d2h_bytes=d2h, peak_device_bytes=peak,
            peak_reserved_bytes=reserved, ledger_peak_bytes=ledger_peak,
            pinned_host_bytes=device.pinned_bytes(), capacity_bytes=device.capacity_bytes(),
            steady_state=steady, cold_latency_s=mgr.latencies_s[0] if steady else None,
            stage_latency_s=figures.get("stage_latency_s", {}),
            h2d_stream_bytes=figures.get("h2d_stream_bytes", 0),
            h2d_stream_bytes_per_s=figures.get("h2d_stream_bytes_per_s"),
            trace=frame, output=kept)

    def _in_second_request(self, exc: DoesNotFitError) -> DoesNotFitError:
        """Say so in `exc`'s message when the plan ran out in the second of two requests
        (the first finished): what the first left on the device is why."""
        if len(self.manager.latencies_s) == 1 and self.plan.keeps_across_requests:
            exc.args = (f"{exc} — in the second of two back-to-back requests: the resident "
                        f"blocks kept from the first (keep_resident) hold their memory",
                        *exc.args[1:])
        return exc

    def _oom(self) -> DeviceOOMError:
        cursor = getattr(self.driver, "cursor", 0)
        call = self.schedule.calls[cursor - 1] if cursor else None
        where = (f"{call.component}.{call.unit} (call {call.index}, stage {call.stage})"
                 if call else "setup")
        budget = format_bytes(self.device.capacity_bytes())
        allocated = self.device.used_bytes()
        return DeviceOOMError(
            f"out of device memory while running {where} under plan {self.plan.name} with a "
            f"{budget} budget ({format_bytes(allocated)} allocated)",
            component=call.component if call else None, unit=call.unit if call else None)


def execute(schedule: Schedule, plan: Plan, device: Device, *, pipeline: ManagedPipeline | None = None,
            request: Request | None = None, tracer: Tracer | None = None,
            keep_output: bool = False, steady_state: bool | None = None) -> RunResult:
    """Run one request of `schedule` under `plan` on `device` (two, the second reported,
    for a plan that keeps weights across requests); see `Execution`."""
    return Execution(schedule, plan, device, pipeline=pipeline, tracer=tracer).run(
        request, keep_output=keep_output, steady_state=steady_state)


def _layerwise_components(plan: Plan, schedule: Schedule) -> list[str]:
    kinds = schedule.kinds
    return [c for c in schedule.components
            if isinstance(plan.config_for(c, kinds.get(c, "")), LayerwiseConfig)]


def clear_component_caches(pipeline: ManagedPipeline | None) -> None:
    """Call `clear_cache()` on every component that has one. diffusers' AutoencoderKLWan
    keeps its causal convolutions' feature cache on the module between `clear_cache` calls at
    a decode's start and end: a decode cut short by running out of memory leaves it full
    (2.7-5.6 GB on the card in round 4) until the next decode on the same modules."""
    if pipeline is None:
        return
    for module in pipeline.components.values():
        clear = getattr(module, "clear_cache", None)
        if callable(clear):
            clear()


def _trace_figures(frame: pd.DataFrame, plan: Plan, schedule: Schedule) -> dict[str, Any]:
    """Figures read off a trace: compute (unit calls and adapter merges), stall, per-stage
    latency, streaming bandwidth — of the last request (a steady-state run has two)."""
    starts = (frame.kind == "request_start").to_numpy().nonzero()[0]
    request = frame.iloc[starts[-1]:]  # rows are in the order the manager emitted them
    compute = request[request.kind.isin(("compute", "merge"))]
    enters = request[request.kind == "stage_enter"].groupby("stage").t_s.min()
    exits = request[request.kind == "stage_exit"].groupby("stage").t_s.max()
    streamed = request[(request.kind == "load") & (request.stream == "h2d")
                       & request.component.isin(_layerwise_components(plan, schedule))
                       & (request.unit != REST)]
    busy = float((streamed.end_s - streamed.t_s).sum())
    nbytes = int(streamed.bytes.sum())
    return {
        "compute_s": float((compute.end_s - compute.t_s).sum()),
        "stall_s": float(request.stall_s[request.kind == "wait"].sum()),
        "stage_latency_s": {str(k): float(exits[k] - enters[k])
                            for k in enters.index if k in exits.index},
        "h2d_stream_bytes": nbytes,
        "h2d_stream_bytes_per_s": nbytes / busy if busy > 0 else None,
    }
