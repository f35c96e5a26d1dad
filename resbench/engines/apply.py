"""`apply_plan`: run your own diffusers pipeline (real weights) under a residency plan.

    handle = resbench.apply_plan(pipe, "strategies/wan2.2-t2v-a14b/h100-80g-calibrated-48GB.tuned.toml")
    video = pipe(prompt="a fox in the snow").frames[0]    # each call runs under the plan
    handle.remove()                                       # the pipeline is as it was

The pipeline is one whose shape the diffusers engine knows (`resbench.engines.catalog`: a
`WanPipeline` with one or two experts, a `FluxPipeline`), with its tokenizers and its
weights wherever they were loaded (the CPU, typically). Its own `__call__` and
`encode_prompt` run unchanged; the plan is applied through pieces that `remove()` takes away:

* the pipeline's class is swapped for a subclass whose `__call__` runs each call as one
  request of the residency manager;
* forward hooks on every component and block (`PipelineHookBridge`, `TorchDriver`) and a
  wrapper on the VAE's `encode` / `decode`;
* the weights: each unit's tensors move into the device's host copy (pinned slabs on a GPU,
  as the plan says), and their slots are rebound — each `Parameter` keeps its identity, only
  its `.data` changes — to device copies while the unit is loaded, to 0-size placeholders
  otherwise. Host memory holds the weights once.

`remove()` takes the hooks, the wrapper and the class away, copies every parameter's data
back from the host copy to the device and dtype it had, and puts every buffer object back:
same modules, same `Parameter` objects, same values, so the same outputs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resbench.devices.base import UnitKey
from resbench.devices.cpu import CpuDevice, _rebind
from resbench.drivers.torch_driver import TorchDriver
from resbench.engines.catalog import ENGINE_MODELS, EngineModel
from resbench.engines.hooks import PipelineHookBridge
from resbench.engines.pipeline import DiffusersPipeline
from resbench.errors import InputError
from resbench.pipeline import Request, UnitSlots, unit_slots_of
from resbench.residency.manager import ResidencyManager
from resbench.residency.pinning import pinned_units
from resbench.residency.plan import Plan, config_to_dict
from resbench.resources import resolve_plan
from resbench.schedule import Schedule
from resbench.trace import Tracer

if TYPE_CHECKING:
    from resbench.devices.cuda import CudaDevice
from resbench.units import format_bytes

HANDLE_ATTR = "_resbench_handle"
"""Set on the managed subclass: the handle that owns the pipeline."""

UNSUPPORTED = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
               "negative_pooled_prompt_embeds", "timesteps", "sigmas")
"""Call arguments the schedule cannot follow yet: precomputed embeddings skip the text
encoders the schedule calls; custom timesteps change the step count."""


def apply_plan(pipe: Any, plan: Plan | str | Path, *, device: torch.device | str = "cuda",
               budget_bytes: int | None = None, request: Request | None = None) -> ResidencyHandle:
    """Run `pipe` (a diffusers pipeline, real weights) under `plan` from now until
    `handle.remove()`; see the module doc for what changes and what is restored.

    `plan`: a `Plan`, a plan TOML (`resbench tune` writes them) or a preset name.
    `device`: where the pipeline computes — `cuda` (`cuda:N`), or `cpu` (the CPU device: two
    pools on the CPU, for checking a plan without a GPU). `budget_bytes`: the device memory
    the manager plans within (the dynamic policy's keep / prefetch decisions; on `cpu` a
    ledger that raises when exceeded); None: the whole card. It is not enforced on the
    CUDA allocator.

    The manager follows a schedule: the request's unit calls in order, recorded on a meta
    copy of `pipe` (same modules, configs and dtypes, no weights), which takes seconds. A
    schedule is one request's shape (size, frames, steps, CFG, batch, text length, decode
    or not), so it must be known before the first unit runs:

    * with `request`, it is recorded now, and the weights are placed now (setup: resident
      components loaded, host copies pinned), so the first call is not slower than the next;
    * without, it is read from the first call's arguments (defaults included) and recorded
      then, so the usual `pipe(prompt=...)` needs nothing more.

    Either way, a call of another shape (with `request`: one whose arguments do not match it)
    raises `InputError` before it runs anything: `remove()` and apply again for the new
    shape (a tuned plan is tuned for one request).
    A call that fails (out of memory, a schedule mismatch) removes the plan before the error
    propagates: the pipeline is then as it was before `apply_plan`.
    """
    the_plan = plan if isinstance(plan, Plan) else resolve_plan(plan)
    return ResidencyHandle(pipe, the_plan, device=torch.device(device), budget_bytes=budget_bytes,
                           request=request)


# ---------------------------------------------------------------------------------------------
# The shape of a call


@dataclass(frozen=True, slots=True)
class CallShape:
    """What of a call decides its schedule: the unit calls, their order and their sizes."""

    height: int
    width: int
    frames: int
    steps: int
    cfg: bool
    batch: int
    decode: bool
    """False for `output_type="latent"`: the VAE is not called."""
    text_lengths: tuple[tuple[str, int], ...]
    """(call argument, tokens) for text encoders whose length a call argument sets."""
    guidance: float = field(default=1.0, compare=False)

    def request(self) -> Request:
        return Request(height=self.height, width=self.width, frames=self.frames,
                       steps=self.steps, guidance=self.guidance, cfg=self.cfg, batch=self.batch)

    def __str__(self) -> str:
        text = ", ".join(f"{arg} {n}" for arg, n in self.text_lengths)
        return (f"{self.height}x{self.width}x{self.frames}, {self.steps} steps, cfg "
                f"{'on' if self.cfg else 'off'}, batch {self.batch}"
                + (f", {text}" if text else "") + ("" if self.decode else ", no decode"))


def call_shape(call: Callable[..., Any], pipe: Any, model: EngineModel, args: tuple[Any, ...],
               kwargs: Mapping[str, Any], request: Request | None = None) -> CallShape:
    """The shape of `call(pipe, *args, **kwargs)`, defaults included; `request` replaces what
    a `Request` says (size, frames, steps, guidance, CFG, batch)."""
    bound = inspect.signature(call).bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    given = [name for name in UNSUPPORTED if a.get(name) is not None]
    if given:
        raise InputError(f"apply_plan cannot follow a call with {', '.join(given)}: the "
                         f"schedule is recorded with the pipeline's own text encoders and "
                         f"step count; pass prompt= and num_inference_steps=")
    true_cfg = (a.get("true_cfg_scale") or 1.0) > 1 and a.get("negative_prompt") is not None
    if true_cfg and model.true_cfg != "true_cfg_scale":
        raise InputError(f"{model.name}: true CFG (true_cfg_scale > 1 with a negative prompt) "
                         "is not modelled; leave true_cfg_scale at 1")
    prompt = a.get("prompt")
    if prompt is None:
        raise InputError("apply_plan needs calls with prompt=")
    per_prompt = a.get("num_videos_per_prompt") or a.get("num_images_per_prompt") or 1
    # FLUX leaves the size None: the pipeline's default sample size then decides.
    default_size = getattr(pipe, "default_sample_size", 0) * getattr(pipe, "vae_scale_factor", 0)
    # Qwen-Image guides with true_cfg_scale (its guidance_scale is None: no guidance input).
    guidance = float(a["true_cfg_scale"] if model.true_cfg == "true_cfg_scale"
                     else a["guidance_scale"])
    lengths = tuple(sorted({(r.text.length_argument, int(a[r.text.length_argument]))
                            for r in model.components if r.text is not None
                            and r.text.length_argument in a}))
    shape = CallShape(
        height=int(a.get("height") or default_size), width=int(a.get("width") or default_size),
        frames=int(a.get("num_frames", 1)) if model.is_video else 1,
        steps=int(a["num_inference_steps"]),
        # Wan runs CFG exactly when guidance_scale > 1, Qwen-Image when true_cfg_scale > 1
        # with a negative prompt; a distilled model takes guidance_scale as an input.
        cfg=(model.true_cfg == "guidance_scale" and guidance > 1) or true_cfg,
        batch=(len(prompt) if isinstance(prompt, list) else 1) * int(per_prompt),
        decode=a.get("output_type") != "latent", text_lengths=lengths, guidance=guidance)
    if request is None:
        return shape
    return dataclasses.replace(shape, height=request.height, width=request.width,
                               frames=request.frames, steps=request.steps, cfg=request.cfg,
                               batch=request.batch, guidance=request.guidance)


# ---------------------------------------------------------------------------------------------
# The pipeline's model, its meta copy, its schedule


def engine_model_of(pipe: Any) -> EngineModel:
    """The engine model with `pipe`'s class and components (its roles: kinds, text inputs)."""
    modules = {n for n, m in getattr(pipe, "components", {}).items() if isinstance(m, nn.Module)}
    cls = type(pipe).__name__
    matches = [m for m in ENGINE_MODELS.values()
               if m.pipeline_class() == cls and set(m.component_names) == modules]
    if not matches:
        known = "; ".join(f"{m.pipeline_class()} with {', '.join(m.component_names)}"
                          for m in ENGINE_MODELS.values())
        raise InputError(f"apply_plan does not know a {cls} with components "
                         f"{', '.join(sorted(modules)) or '(none)'}; it knows: {known}")
    # Wan2.2 TI2V-5B and a Wan2.1 pipeline have the same roles: prefer the matching config.
    config = dict(getattr(pipe, "config", {}))
    exact = [m for m in matches if all(config.get(k) == v for k, v in m.pipeline_config().items())]
    return (exact or matches)[0]


def _on_meta(t: torch.Tensor) -> torch.Tensor:
    meta = torch.empty_like(t, device="meta")
    return nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta


def meta_copy(pipe: Any, cls: type) -> Any:
    """A `cls` pipeline whose modules are copies of `pipe`'s with every tensor on meta (same
    structure, dtypes and configs: adapters included), a copy of its scheduler, and no
    tokenizers or other processors (the recording calls the text encoders itself)."""
    import diffusers

    parts: dict[str, Any] = {}
    for name, value in pipe.components.items():
        if isinstance(value, nn.Module):
            memo: dict[int, Any] = {id(t): _on_meta(t) for t in [*value.parameters(),
                                                                  *value.buffers()]}
            parts[name] = copy.deepcopy(value, memo)
        elif isinstance(value, diffusers.SchedulerMixin):
            parts[name] = copy.deepcopy(value)
        else:
            parts[name] = None
    accepted = set(inspect.signature(cls).parameters)
    config = {k: v for k, v in pipe.config.items() if k in accepted and k not in parts}
    twin = cls(**{k: v for k, v in parts.items() if k in accepted}, **config)
    twin.set_progress_bar_config(disable=True)
    return twin


def record_call(pipe: Any, cls: type, model: EngineModel, shape: CallShape) -> Schedule:
    """The schedule of a call of `shape`, recorded on a meta copy of `pipe`."""
    from resbench.engines.record import record_pipeline

    return record_pipeline(meta_copy(pipe, cls), model, shape.request(),
                           output_type="pt" if shape.decode else "latent",
                           extra=dict(shape.text_lengths))


# ---------------------------------------------------------------------------------------------
# Where the weights live while the plan applies


@dataclass
class Placement:
    """A device holding the pipeline's weights, and what frees its host copies afterwards."""

    device: CpuDevice | CudaDevice
    """A device that moves real tensors: `host_tensors` gives a user's weights back."""
    release: Callable[[], None] = lambda: None


def _on_cpu(units: UnitSlots, pinned: set[UnitKey], budget_bytes: int | None,
            where: torch.device) -> Placement:
    return Placement(CpuDevice(units, capacity_bytes=budget_bytes or 1 << 62))


def _on_cuda(units: UnitSlots, pinned: set[UnitKey], budget_bytes: int | None,
             where: torch.device) -> Placement:
    from resbench.devices.cuda import CudaDevice, HostWeights
    from resbench.execution.backends import cuda_unavailable

    if why := cuda_unavailable():
        raise InputError(f"apply_plan on {where} cannot run: {why}; use device='cpu'")
    host = HostWeights()
    moved: list[tuple[UnitKey, list[tuple[nn.Module, str, torch.Tensor, torch.device]]]] = []
    try:
        for comp, comp_units in units.items():
            for unit, slots in comp_units.items():
                entries = [(m, n, getattr(m, n), getattr(m, n).device) for m, n in slots]
                host.capture((comp, unit), [t for _, _, t, _ in entries],
                             pin=(comp, unit) in pinned)
                if any(where.type == "cuda" for *_, where in entries):
                    torch.cuda.synchronize()  # the copy reads weights freed just below
                # Unit by unit, so that host memory holds the weights once, not twice.
                for m, n, t, _ in entries:
                    _rebind(m, n, torch.empty(0, dtype=t.dtype, device=where))
                moved.append(((comp, unit), entries))
        device = CudaDevice(units, host, budget_bytes=budget_bytes, device=where)
    except BaseException:
        for key, entries in moved:  # give back what was taken (pinning ran out of memory …)
            unit_host = host.units[key]
            buf = unit_host.pinned if unit_host.pinned is not None else unit_host.pageable
            assert buf is not None
            for (m, n, t, at), view in zip(entries, unit_host.layout.views(buf), strict=True):
                if isinstance(t, nn.Parameter):
                    t.data = view.to(at, copy=True)
                else:
                    m._buffers[n] = t
        host.close()
        raise
    return Placement(device, host.close)


PLACEMENTS: dict[str, Callable[[UnitSlots, set[UnitKey], int | None, torch.device], Placement]] = {
    "cpu": _on_cpu, "cuda": _on_cuda}


# ---------------------------------------------------------------------------------------------
# The handle


class _Session:
    """One schedule applied: weights placed, manager set up, hooks on; `close` undoes it."""

    def __init__(self, handle: ResidencyHandle, shape: CallShape) -> None:
        self.shape = shape
        self.schedule = record_call(handle.pipe, handle.pipeline_class, handle.model, shape)
        units = unit_slots_of(handle.view)
        # What `close` gives back: each slot's tensor object (a Parameter keeps its identity
        # while its data moves; a buffer object is put back as it was) and its device.
        self.originals = {(comp, unit): [(m, n, getattr(m, n), getattr(m, n).device)
                                         for m, n in slots]
                          for comp, comp_units in units.items() for unit, slots in comp_units.items()}
        pinned = {(u.component, u.name) for u in pinned_units(handle.plan, self.schedule,
                                                              handle.kinds)}
        self.placement = PLACEMENTS[handle.device.type](units, pinned, handle.budget_bytes,
                                                        handle.device)
        self.driver: TorchDriver | None = None
        self.bridge: PipelineHookBridge | None = None
        try:
            self.manager = ResidencyManager(self.schedule, handle.plan, self.placement.device,
                                            kinds=handle.kinds, tracer=Tracer(enabled=False))
            self.driver = TorchDriver(handle.view, self.manager)
            self.bridge = PipelineHookBridge(handle.pipe, handle.model, self.driver)
            self.manager.setup()
        except BaseException:
            self.close()
            raise

    def run(self, call: Callable[..., Any], pipe: Any, args: tuple[Any, ...],
            kwargs: Mapping[str, Any]) -> Any:
        assert self.driver is not None and self.bridge is not None
        with self.driver.request():
            out = call(pipe, *args, **kwargs)
            self.bridge.finish()
        return out

    def close(self, *, keep_host_buffers: bool = False) -> None:
        if self.bridge is not None:
            self.bridge.close()
        if self.driver is not None:
            self.driver.remove()
        device = self.placement.device
        device.close()
        # Unit by unit, each host copy forgotten once copied out: the host holds the weights
        # once more by one unit at most.
        for key, entries in self.originals.items():
            hosts = device.host_tensors(key)
            for (module, name, original, where), host in zip(entries, hosts, strict=True):
                if isinstance(original, nn.Parameter):
                    keep = keep_host_buffers and where.type == "cpu"
                    # kept: a view of the unit's host buffer, unlocked below by release_host
                    original.data = host if keep else host.to(where, copy=True)
                else:
                    module._buffers[name] = original
            del hosts
            device.release_host(key)
        self.placement.release()


class ResidencyHandle:
    """`pipe` under `plan` until `remove()` (see `apply_plan`). `repr` shows the strategy
    each component runs under and the request the schedule is for."""

    def __init__(self, pipe: Any, plan: Plan, *, device: torch.device,
                 budget_bytes: int | None = None, request: Request | None = None) -> None:
        cls = type(pipe)
        if getattr(cls, HANDLE_ATTR, None) is not None:
            raise InputError("this pipeline is already under a plan: call remove() on its "
                             "handle first")
        if device.type not in PLACEMENTS:
            raise InputError(f"apply_plan runs on {' or '.join(PLACEMENTS)}, not {device}")
        self._refuse_other_offloading(pipe)
        self.pipe = pipe
        self.plan = plan
        self.device = device
        self.budget_bytes = budget_bytes
        self.pipeline_class = cls
        self.model = engine_model_of(pipe)
        self.view = DiffusersPipeline(self.model, pipe)
        self.kinds: dict[str, str] = dict(self.view.kinds)
        plan.check_components(self.kinds, source=plan.name)
        self.request = request
        self.session: _Session | None = None
        self.removed = False
        pipe.__class__ = self._managed_class()
        if request is not None:
            # the call arguments a Request does not set (text length, decode) at their defaults
            self._start(call_shape(cls.__call__, pipe, self.model, (), {"prompt": ""}, request))

    # -- the pipeline's calls ------------------------------------------------------------------
    def _managed_class(self) -> type:
        cls, handle = self.pipeline_class, self

        def __call__(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            return handle._call(args, kwargs)

        functools.update_wrapper(__call__, cls.__call__)
        return type(cls.__name__, (cls,), {
            "__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, HANDLE_ATTR: self})

    def _call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        call = self.pipeline_class.__call__
        shape = call_shape(call, self.pipe, self.model, args, kwargs)
        if self.session is None:
            self._start(shape)
        assert self.session is not None
        if shape != self.session.shape:
            raise InputError(f"this call is {shape}; the plan's schedule was recorded for "
                             f"{self.session.shape}: remove() and apply_plan again for it")
        try:
            return self.session.run(call, self.pipe, args, kwargs)
        except BaseException:
            self.remove()
            raise

    def _start(self, shape: CallShape) -> None:
        try:
            self.session = _Session(self, shape)
        except BaseException:
            self.remove()
            raise

    # -- removing ------------------------------------------------------------------------------
    def remove(self, *, keep_host_buffers: bool = False) -> None:
        """Give the pipeline back as it was (module doc); a second call does nothing.

        `keep_host_buffers`: a parameter that was on the CPU becomes a view of its unit's
        host buffer (unlocked, so pageable) instead of a fresh copy: no copy (a fresh copy
        of a 70 GB model into new pages takes ~40 s), same values, dtype and device, but the
        tensors of a unit share one buffer (safetensors refuses to save tensors that share
        memory: clone them first)."""
        if self.removed:
            return
        self.removed = True
        try:
            if self.session is not None:
                self.session.close(keep_host_buffers=keep_host_buffers)
                self.session = None
        finally:
            self.pipe.__class__ = self.pipeline_class

    def __enter__(self) -> ResidencyHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @staticmethod
    def _refuse_other_offloading(pipe: Any) -> None:
        for name, module in getattr(pipe, "components", {}).items():
            if not isinstance(module, nn.Module):
                continue
            for sub in module.modules():
                # diffusers creates an empty hook registry on a DiT's first cache_context
                registry = getattr(sub, "_diffusers_hook", None)
                if hasattr(sub, "_hf_hook") or (registry is not None and registry.hooks):
                    raise InputError(f"{name} is under diffusers / accelerate offloading or "
                                     f"hooks; remove them (reload the pipeline) before "
                                     f"apply_plan")

    # -- reading -------------------------------------------------------------------------------
    @property
    def schedule(self) -> Schedule | None:
        """The schedule the manager follows (None until it is recorded)."""
        return self.session.schedule if self.session is not None else None

    def __repr__(self) -> str:
        state = ("removed" if self.removed else f"schedule for {self.session.shape}"
                 if self.session is not None else "schedule recorded at the first call")
        budget = "whole device" if self.budget_bytes is None else format_bytes(self.budget_bytes)
        lines = [f"ResidencyHandle({self.pipeline_class.__name__} as {self.model.name}, plan "
                 f"{self.plan.name!r} (policy {self.plan.policy}), on {self.device}, budget "
                 f"{budget}; {state})"]
        width = max(len(c) for c in self.kinds)
        for comp, kind in self.kinds.items():
            cfg = config_to_dict(self.plan.applied_config(comp, kind))
            name = cfg.pop("strategy")
            knobs = ", ".join(f"{k}={v}" for k, v in cfg.items())
            lines.append(f"  {comp:<{width}}  {name}" + (f"({knobs})" if knobs else ""))
        return "\n".join(lines)
