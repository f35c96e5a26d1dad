"""Record a diffusers pipeline's call schedule on meta tensors, through removable hooks.

The accounting is `resbench.record.Recorder`'s, unchanged: FLOPs by op class, bytes moved,
kernels, activation peaks per unit call, blocks of stateless components replayed from a
cache. What differs is who drives it. The zoo's `Pipeline` calls the recorder's component
and step callbacks itself; a diffusers pipeline does not know about them, so
`DiffusersRecorder` installs them as hooks on the real modules:

* a forward pre/post hook on every text encoder and DiT (the component's entry and exit),
  and a wrapper on the VAE's `decode` / `encode` methods (the pipeline calls those, not
  `forward`);
* a forward pre/post hook on every block unit (`resbench.engines.units`);
* `callback_on_step_end` for the denoising step index.

Stages follow from the component entered: a text encoder → `text_encode`, a DiT →
`denoise`, VAE encode → `image_encode`, VAE decode → `decode`.

Attention: on meta, `F.scaled_dot_product_attention` decomposes into bmm + softmax with an
L×L score matrix (and an fp32 upcast) that no GPU kernel materialises. The zoo's layers call
the fused ops on meta instead (`resbench.models.layers.attention`); diffusers and
transformers modules call SDPA, so `FusedAttentionOnMeta` reroutes those calls to the same
fused ops for the recording: recorded FLOPs count as attention, and working memory is that
of the flash / memory-efficient kernels.

Two things make a meta run of a diffusers pipeline possible. The scheduler's timesteps must
stay real (the pipeline compares them with the expert boundary and the scheduler indexes
with them), so `set_timesteps` is pinned to the CPU for the recording; and the timestep
tensor a pipeline hands its transformer is then a CPU tensor, moved to the component's
device on entry. Every hook, wrapper and pin is removed by `close()`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from resbench.engines.build import build_pipeline
from resbench.engines.catalog import STAGE_OF_KIND, EngineModel, get_engine_model
from resbench.engines.run import default_request, run_pipeline
from resbench.engines.units import Unit, residency_units
from resbench.pipeline import Request
from resbench.record import Recorder
from resbench.schedule import ComponentUse, Schedule

_VAE_STAGES = {"encode": "image_encode", "decode": "decode"}


class FusedAttentionOnMeta(TorchFunctionMode):
    """Route `F.scaled_dot_product_attention` on meta tensors to the fused aten ops: flash
    attention without a mask, memory-efficient attention with one (see the module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        bound = _SDPA.bind(*args, **kwargs)
        bound.apply_defaults()
        q, k, v, mask = (bound.arguments[n] for n in ("query", "key", "value", "attn_mask"))
        if not q.is_meta:
            return func(*args, **kwargs)
        if bound.arguments["enable_gqa"] and k.shape[-3] != q.shape[-3]:
            groups = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(groups, -3), v.repeat_interleave(groups, -3)
        causal, scale = bound.arguments["is_causal"], bound.arguments["scale"]
        if mask is None:
            return torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, causal, scale=scale)[0]
        if mask.dtype == torch.bool:
            # The fused kernel takes an additive bias; on meta only its shape matters.
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        bias = mask.expand(*q.shape[:-1], k.shape[-2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, False, 0.0, causal, scale=scale)[0]


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
          scale: float | None = None, enable_gqa: bool = False) -> None:
    """The signature of `F.scaled_dot_product_attention` (a builtin without one)."""


_SDPA = inspect.signature(_sdpa)


def _to_device(device: torch.device) -> Callable[[Any], Any]:
    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.device != device:
            return x.to(device)
        return x
    return move


class DiffusersRecorder(Recorder):
    """`Recorder` driven by hooks on a diffusers pipeline's modules (see the module doc).

    Pass `on_step_end` as the pipeline's `callback_on_step_end`. Use as a context manager,
    or call `close()`: it ends the last stage, and afterwards the modules, the VAE and the
    scheduler are as they were.
    """

    def __init__(self, pipe: Any, model: EngineModel, units: dict[str, list[Unit]]) -> None:
        super().__init__({})  # no zoo components: the hooks are installed below
        self._undo: list[Callable[[], None]] = []
        for role in model.components:
            module = getattr(pipe, role.name)
            if role.kind == "vae":
                for method, stage in _VAE_STAGES.items():
                    self._bracket_method(module, method, role.name, stage)
            else:
                self._bracket_forward(module, role.name, STAGE_OF_KIND[role.kind])
            for unit in units[role.name]:
                if unit.block_index < 0:
                    continue
                (block,) = unit.modules
                # Replaying a block's costs is only sound on meta (a hit returns empty
                # tensors), and VAE blocks carry a feature cache: those always run.
                if role.kind != "vae" and next(block.parameters()).is_meta:
                    self._cache(block)
                self._handles.append(block.register_forward_pre_hook(
                    lambda m, a, c=role.name, u=unit.name: self._block_begin(c, u)))
                self._handles.append(block.register_forward_hook(
                    lambda m, a, o, c=role.name, u=unit.name: self._block_end(c, u, o)))
        self._pin_timesteps_to_cpu(pipe.scheduler)

    # -- installing and removing ------------------------------------------------------------
    def _cache(self, block: nn.Module) -> None:
        previous = block.__dict__.get("forward")
        self._wrap_cached(block)

        def undo() -> None:
            if previous is None:
                del block.forward
            else:
                block.forward = previous
        self._undo.append(undo)

    def _bracket_forward(self, module: nn.Module, component: str, stage: str) -> None:
        device = next(module.parameters()).device

        def pre(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            args, kwargs = tree_map(_to_device(device), (args, kwargs))
            self._enter(component, stage)
            return args, kwargs

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(
            lambda m, a, o: self.component_exit(component)))

    def _bracket_method(self, module: nn.Module, method: str, component: str, stage: str) -> None:
        previous = module.__dict__.get(method)
        original = getattr(module, method)

        @functools.wraps(original)
        def bracketed(*args: Any, **kwargs: Any) -> Any:
            self._enter(component, stage)
            out = original(*args, **kwargs)
            self.component_exit(component)
            return out

        setattr(module, method, bracketed)

        def undo() -> None:
            if previous is None:
                delattr(module, method)
            else:
                setattr(module, method, previous)
        self._undo.append(undo)

    def _pin_timesteps_to_cpu(self, scheduler: Any) -> None:
        original = scheduler.set_timesteps

        # `wraps` keeps the signature: pipelines inspect it for `sigmas` / `mu` support.
        @functools.wraps(original)
        def on_cpu(*args: Any, **kwargs: Any) -> Any:
            kwargs["device"] = "cpu"
            return original(*args, **kwargs)

        scheduler.set_timesteps = on_cpu
        self._undo.append(lambda: delattr(scheduler, "set_timesteps"))

    def close(self) -> None:
        self.finish()
        super().close()
        self._handles.clear()
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> DiffusersRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages and steps ---------------------------------------------------------------------
    def _enter(self, component: str, stage: str) -> None:
        if stage != self.stage:
            if self.stage:
                self.stage_exit(self.stage)
            self.stage_enter(stage)
            if stage == "denoise":
                self.step(0)
        self.component_enter(component)

    def on_step_end(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """`callback_on_step_end`: the calls that follow belong to the next step."""
        self.step(step + 1)
        return {}

    def finish(self) -> None:
        """End the stage in progress (the recording's last); `close()` calls it too."""
        if self.stage:
            self.stage_exit(self.stage)
            self.stage = ""


def uses(model: EngineModel, stages: tuple[str, ...]) -> list[ComponentUse]:
    """Each stage's component uses, in call order (phase = order within the stage)."""
    out = []
    for stage in stages:
        names = [r.name for r in model.components
                 if (r.kind == "vae" and stage in _VAE_STAGES.values())
                 or STAGE_OF_KIND.get(r.kind) == stage]
        out += [ComponentUse(stage, name, phase=i) for i, name in enumerate(names)]
    return out


def schedule_from(recorder: DiffusersRecorder, model: EngineModel, units: dict[str, list[Unit]],
                  request: dict[str, object], scale: float) -> Schedule:
    """The `Schedule` of a finished recording."""
    calls = tuple(c for c in recorder.calls if c is not None)
    stage_order = tuple(dict.fromkeys(c.stage for c in calls))
    return Schedule(model=model.name, scale=scale, request=request,
                    units=tuple(u.info() for r in model.components for u in units[r.name]),
                    uses=tuple(uses(model, stage_order)), stage_order=stage_order, calls=calls,
                    state_bytes=recorder.state_bytes,
                    component_kinds=tuple((r.name, r.kind) for r in model.components))



def record_pipeline(pipe: Any, model: EngineModel, request: Request, *,
                    scale: float = 1.0) -> Schedule:
    """Record `request` on a meta-built pipeline of `model` (see `build_pipeline`).

    The pipeline runs its own `__call__` (expert switch, CFG, scheduler) with every tensor
    on meta: no weights, no compute. `scale` is only recorded in the schedule.
    """
    units = residency_units(pipe)
    recorder = DiffusersRecorder(pipe, model, units)
    with recorder, recorder.flops, recorder.mem, FusedAttentionOnMeta():
        run_pipeline(pipe, model, request, callback_on_step_end=recorder.on_step_end)
    return schedule_from(recorder, model, units, dataclasses.asdict(request), scale)


def record_schedule(name: str, request: Request | None = None, *, scale: float = 1.0,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Schedule:
    """Build engine model `name` on meta (scaled, overridden) and record `request` (default:
    the zoo's default request for the model)."""
    model = get_engine_model(name)
    pipe = build_pipeline(name, scale=scale, overrides=overrides)
    return record_pipeline(pipe, model, request or default_request(model), scale=scale)
