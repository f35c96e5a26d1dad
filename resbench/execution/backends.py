"""Backends: where `execute` runs one model and request — the simulator, the CPU device, the GPU.

A backend holds what every run of one (model, request, scale) shares — the recorded schedule,
the simulator's call times, the GPU's pinned host weights — and makes a fresh device (and,
for real runs, the pipeline bound to it) for each plan it is asked to run. The schedule and
pipelines come from an engine (`resbench.engines.base`: the zoo's modules or the diffusers
pipeline), which the backend asks without knowing which it is. `profile`, `tune`
(simulated and measured trials) and the GPU benchmarks all run plans through `Backend.run`;
the device name is looked up once, in `make_backend`, and never tested again.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch

from resbench.engines.base import Engine, make_engine
from resbench.errors import InputError
from resbench.execution.core import RunResult, execute
from resbench.hardware import HardwareProfile
from resbench.models.base import ModelSpec
from resbench.pipeline import Request, unit_slots_of
from resbench.residency.plan import Plan
from resbench.schedule import Schedule
from resbench.trace import Tracer
from resbench.units import format_bytes


class Backend(ABC):
    """Runs plans for one model, request and scale. Subclasses set `kind` and `measured`."""

    kind: ClassVar[str] = ""
    measured: ClassVar[bool] = False
    warmup_default: ClassVar[bool] = False
    """Whether `run` does an untimed run first unless told otherwise (kernel loading, cuBLAS)."""
    schedule_dtype: ClassVar[torch.dtype | None] = None
    """The dtype the schedule is recorded in (None: the model's, bf16)."""
    steady_state: bool | None = None
    """Each run's figures are the second of two back-to-back requests on one setup (True),
    one request (False), or as the plan needs (None: two for a plan that keeps weights
    between requests); see `resbench.execution.Execution.run`."""

    def __init__(self, spec: ModelSpec, request: Request, *, profile: HardwareProfile,
                 scale: float = 1.0, schedule: Schedule | None = None,
                 engine: Engine | str = "zoo") -> None:
        """`engine`: an engine, or its name (`resbench.engines.base.ENGINES`)."""
        self.spec = spec
        self.request = request
        self.profile = profile
        self.scale = scale
        self.engine = engine if isinstance(engine, Engine) else make_engine(engine, spec,
                                                                             scale=scale)
        self._schedule = schedule

    @property
    def schedule(self) -> Schedule:
        """The request's schedule, recorded on first use."""
        if self._schedule is None:
            self._schedule = self.engine.record(self.request, dtype=self.schedule_dtype)
        return self._schedule

    @property
    def label(self) -> str:
        """What ran the plans, for results and reports."""
        return self.kind

    def run(self, plan: Plan, budget_bytes: int | None, *, trace: bool = True,
            warmup: bool | None = None, keep_output: bool = False,
            around: contextlib.AbstractContextManager[Any] | None = None) -> RunResult:
        """Run the request under `plan` with `budget_bytes` of device memory (None: the whole
        card). `warmup` (default: the backend's) runs it once untimed first; `around` wraps
        the timed run (a `torch.profiler.profile`, say). Raises `DoesNotFitError` /
        `DeviceOOMError` when the plan does not fit."""
        warm = self.warmup_default if warmup is None else warmup
        self.prepare()  # outside the budget: what it builds is not the plan's to pay for
        with self.budget(budget_bytes):
            if warm:
                self.run_once(plan, budget_bytes, trace=False, keep_output=False)
            with around if around is not None else contextlib.nullcontext():
                return self.run_once(plan, budget_bytes, trace=trace, keep_output=keep_output)

    @contextlib.contextmanager
    def budget(self, budget_bytes: int | None) -> Iterator[None]:
        """Enforce `budget_bytes` for the runs inside (a ledger does it by itself elsewhere)."""
        yield

    def prepare(self) -> None:  # noqa: B027 - most backends build nothing up front
        """Build what every run shares (the GPU's host weights), before any budget applies."""

    @abstractmethod
    def run_once(self, plan: Plan, budget_bytes: int | None, *, trace: bool,
                 keep_output: bool) -> RunResult:
        """One run on a fresh device."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing across runs
        """Free what the backend holds across runs (pinned host weights)."""


class SimBackend(Backend):
    """The simulator: the schedule replayed on a `SimDevice` of the hardware profile."""

    kind = "sim"

    def __init__(self, spec: ModelSpec, request: Request, *, profile: HardwareProfile,
                 scale: float = 1.0, schedule: Schedule | None = None,
                 engine: Engine | str = "zoo", call_times_s: Sequence[float] | None = None) -> None:
        super().__init__(spec, request, profile=profile, scale=scale, schedule=schedule,
                         engine=engine)
        self._call_times = call_times_s

    @property
    def label(self) -> str:
        return f"simulated {self.profile.name}"

    @property
    def call_times_s(self) -> Sequence[float]:
        if self._call_times is None:
            from resbench.cost import CostModel

            self._call_times = CostModel(self.profile).call_times(self.schedule.calls)
        return self._call_times

    def run_once(self, plan: Plan, budget_bytes: int | None, *, trace: bool,
                 keep_output: bool) -> RunResult:
        from resbench.drivers.replay import sim_device

        device = sim_device(self.schedule, self.profile, capacity_bytes=budget_bytes,
                            call_times_s=self.call_times_s)
        return execute(self.schedule, plan, device, tracer=Tracer(enabled=trace),
                       steady_state=self.steady_state)


CPU_HOST_LIMIT_BYTES = 8 * 2**30
"""The CPU device holds every weight twice (host and "device" pools): cap what it may build."""


class CpuBackend(Backend):
    """Real tensors on two CPU pools (fp32): checks a plan's behaviour without a GPU."""

    kind = "cpu"
    measured = True
    schedule_dtype = torch.float32

    def __init__(self, spec: ModelSpec, request: Request, *, profile: HardwareProfile,
                 scale: float = 1.0, schedule: Schedule | None = None,
                 engine: Engine | str = "zoo", seed: int = 0) -> None:
        super().__init__(spec, request, profile=profile, scale=scale, schedule=schedule,
                         engine=engine)
        self.seed = seed
        host = sum(u.weight_bytes for u in self.schedule.units)
        if 2 * host > CPU_HOST_LIMIT_BYTES:
            raise InputError(f"--device cpu holds every weight twice in host RAM "
                             f"({format_bytes(2 * host)} at scale {scale:g}, more than "
                             f"{format_bytes(CPU_HOST_LIMIT_BYTES)}); use --scale 0.05 or "
                             f"--device sim")

    def components(self) -> dict[str, torch.nn.Module]:
        return self.engine.components("cpu", dtype=torch.float32, seed=self.seed)

    def run_once(self, plan: Plan, budget_bytes: int | None, *, trace: bool,
                 keep_output: bool) -> RunResult:
        from resbench.devices.cpu import CpuDevice

        pipe = self.engine.pipeline(self.components(), device="cpu", dtype=torch.float32)
        device = CpuDevice(unit_slots_of(pipe), capacity_bytes=budget_bytes or 1 << 62)
        return execute(self.schedule, plan, device, pipeline=pipe, request=self.request,
                       tracer=Tracer(enabled=trace), keep_output=keep_output,
                       steady_state=self.steady_state)


class CudaBackend(Backend):
    """The real card: seeded random bf16 weights pinned once, the budget emulated with
    `torch.cuda.set_per_process_memory_fraction`, a warm-up run before each timed one."""

    kind = "cuda"
    measured = True
    warmup_default = True

    def __init__(self, spec: ModelSpec, request: Request, *, profile: HardwareProfile,
                 scale: float = 1.0, schedule: Schedule | None = None,
                 engine: Engine | str = "zoo", weights: Any = None, seed: int = 0) -> None:
        """`weights`: the engine's `cuda_weights`, made once per process and shared."""
        if why := cuda_unavailable():
            raise InputError(f"--device cuda cannot run: {why}; use --device sim")
        super().__init__(spec, request, profile=profile, scale=scale, schedule=schedule,
                         engine=engine)
        self._weights = weights
        self.seed = seed

    @property
    def label(self) -> str:
        return torch.cuda.get_device_name()

    @property
    def weights(self) -> Any:
        """Host copies of every unit, pinned (built on first use: minutes at full size)."""
        if self._weights is None:
            self._weights = self.engine.cuda_weights(seed=self.seed)
        return self._weights

    def prepare(self) -> None:
        # The weights are drawn on the card before they are pinned on the host: under a
        # budget's memory fraction, a model larger than the budget could not be built.
        _ = self.weights

    @contextlib.contextmanager
    def budget(self, budget_bytes: int | None) -> Iterator[None]:
        with memory_budget(budget_bytes):
            yield

    def run_once(self, plan: Plan, budget_bytes: int | None, *, trace: bool,
                 keep_output: bool) -> RunResult:
        from resbench.devices.cuda import CudaDevice

        weights = self.weights
        cuda = current_cuda()
        pipe = self.engine.pipeline(weights.components, device=cuda)
        device = CudaDevice(unit_slots_of(pipe), weights.host, budget_bytes=budget_bytes,
                            device=cuda)
        return execute(self.schedule, plan, device, pipeline=pipe, request=self.request,
                       tracer=Tracer(enabled=trace), keep_output=keep_output,
                       steady_state=self.steady_state)

    def close(self) -> None:
        if self._weights is not None:
            self._weights.host.close()
            self._weights = None


@contextlib.contextmanager
def memory_budget(budget_bytes: int | None, device: torch.device | str = "cuda") -> Iterator[None]:
    """Cap this process's CUDA caching allocator at `budget_bytes` (None: the whole card)."""
    if budget_bytes is None:
        yield
        return
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if budget_bytes > total:
        raise InputError(f"budget {format_bytes(budget_bytes)} is above the card's "
                         f"{format_bytes(total)}; give a smaller --budget")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(budget_bytes / total, index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


BACKENDS: dict[str, type[Backend]] = {b.kind: b for b in (SimBackend, CpuBackend, CudaBackend)}


def resolve_device(name: str) -> str:
    """`auto` → `cuda` when a GPU is visible, else `sim`; other names are checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "sim"
    if name not in BACKENDS:
        raise InputError(f"device must be one of auto, {', '.join(BACKENDS)}; got {name!r}")
    return name


def make_backend(device: str, spec: ModelSpec, request: Request, *, profile: HardwareProfile,
                 scale: float = 1.0, schedule: Schedule | None = None,
                 engine: Engine | str = "zoo") -> Backend:
    """The backend for a device name (`auto`, `sim`, `cpu`, `cuda`) running `engine`'s
    pipeline (an engine or its name)."""
    return BACKENDS[resolve_device(device)](spec, request, profile=profile, scale=scale,
                                            schedule=schedule, engine=engine)


def current_cuda() -> torch.device:
    """The current CUDA device, with its index."""
    return torch.device("cuda", torch.cuda.current_device())


def cuda_unavailable() -> str | None:
    """Why runs on the GPU cannot happen here, or None when they can."""
    return None if torch.cuda.is_available() else "no CUDA device is visible"
