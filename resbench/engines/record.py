"""Record a diffusers pipeline's call schedule on meta tensors, through removable hooks.

The accounting is `resbench.record.Recorder`'s, unchanged: FLOPs by op class, bytes moved,
kernels, activation peaks per unit call, blocks of stateless components replayed from a
cache. What differs is who drives it. The zoo's `Pipeline` calls the recorder's component
and step callbacks itself; a diffusers pipeline does not, so `DiffusersRecorder` gets them
from a `PipelineHookBridge` (`resbench.engines.hooks`: component entries, stages, steps, and
the two adjustments a meta run needs) and adds a forward pre/post hook on every block unit
(`resbench.engines.units`).

Attention: on meta, `F.scaled_dot_product_attention` decomposes into bmm + softmax with an
L×L score matrix (and an fp32 upcast) that no GPU kernel materialises. The zoo's layers call
the fused ops on meta instead (`resbench.models.layers.attention`); diffusers and
transformers modules call SDPA, so `FusedAttentionOnMeta` reroutes those calls to the same
fused ops for the recording: recorded FLOPs count as attention, and working memory is that
of the flash / memory-efficient kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from resbench.engines.build import build_pipeline
from resbench.engines.catalog import EngineModel, get_engine_model
from resbench.engines.hooks import PipelineHookBridge, restore_attribute, stages_of
from resbench.engines.run import default_request, run_pipeline
from resbench.engines.units import Unit, residency_units
from resbench.pipeline import Request
from resbench.record import Recorder
from resbench.schedule import ComponentUse, Schedule


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


class DiffusersRecorder(Recorder):
    """`Recorder` driven by hooks on a diffusers pipeline's modules (see the module doc).

    Pass `on_step_end` as the pipeline's `callback_on_step_end`. Use as a context manager,
    or call `close()`: it ends the last stage, and afterwards the pipeline is as it was.
    """

    def __init__(self, pipe: Any, model: EngineModel, units: dict[str, list[Unit]]) -> None:
        super().__init__({})  # no zoo components: the hooks are installed below
        self.modules = {r.name: getattr(pipe, r.name) for r in model.components}
        self.bridge = PipelineHookBridge(pipe, model, self)
        self.on_step_end = self.bridge.on_step_end
        for role in model.components:
            for unit in units[role.name]:
                if unit.block_index < 0:
                    continue
                (block,) = unit.modules
                # Replaying a block's costs is only sound on meta (a hit returns empty
                # tensors), and VAE blocks carry a feature cache: those always run.
                if role.kind != "vae" and next(block.parameters()).is_meta:
                    previous = block.__dict__.get("forward")
                    self._wrap_cached(block)
                    self.bridge.on_close(functools.partial(restore_attribute, block, "forward",
                                                           previous))
                self._handles.append(block.register_forward_pre_hook(
                    lambda m, a, c=role.name, u=unit.name: self._block_begin(c, u)))
                self._handles.append(block.register_forward_hook(
                    lambda m, a, o, c=role.name, u=unit.name: self._block_end(c, u, o)))

    def close(self) -> None:
        self.bridge.close()
        super().close()
        self._handles.clear()

    def __enter__(self) -> DiffusersRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def uses(model: EngineModel, stages: tuple[str, ...]) -> list[ComponentUse]:
    """Each stage's component uses, in call order (phase = order within the stage)."""
    out = []
    for stage in stages:
        names = [r.name for r in model.components
                 if stage in stages_of(r, refine=model.refine is not None)]
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
                    component_kinds=tuple((r.name, r.kind) for r in model.components),
                    merges=tuple(recorder.merges))


def record_pipeline(pipe: Any, model: EngineModel, request: Request, *,
                    scale: float = 1.0, output_type: str = "pt",
                    extra: Mapping[str, Any] | None = None) -> Schedule:
    """Record `request` on a meta-built pipeline of `model` (see `build_pipeline`).

    The pipeline runs its own `__call__` (expert switch, CFG, scheduler) with every tensor
    on meta: no weights, no compute. `scale` is only recorded in the schedule;
    `output_type` and `extra` are passed to `run_pipeline` (`"latent"`: no decode).
    """
    units = residency_units({r.name: getattr(pipe, r.name) for r in model.components})
    recorder = DiffusersRecorder(pipe, model, units)
    with recorder, recorder.flops, recorder.mem, FusedAttentionOnMeta():
        run_pipeline(pipe, model, request, bridge=recorder.bridge,
                     output_type=output_type, extra=extra)
    return schedule_from(recorder, model, units, dataclasses.asdict(request), scale)


def record_schedule(name: str, request: Request | None = None, *, scale: float = 1.0,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Schedule:
    """Build engine model `name` on meta (scaled, overridden) and record `request` (default:
    the zoo's default request for the model)."""
    model = get_engine_model(name)
    pipe = build_pipeline(name, scale=scale, overrides=overrides)
    return record_pipeline(pipe, model, request or default_request(model), scale=scale)
