"""Drive resbench's `PipelineHooks` from a diffusers pipeline that knows nothing about them.

The zoo's `Pipeline` calls `stage_enter`, `step`, `component_enter` … itself. A diffusers
pipeline runs its own `__call__`, so `PipelineHookBridge` derives the same callbacks from
removable hooks on its real modules:

* a forward pre/post hook on every component the pipeline calls through `forward` (text
  encoders, DiTs, a vocoder) and a wrapper on the methods it calls otherwise (a VAE's
  `encode` and `decode`): the component's entry and exit;
* `on_step_end`, to pass as the pipeline's `callback_on_step_end`: the step index.

Stages follow from the component and method entered (`ComponentRole.calls`): a text encoder
→ `text_encode`, a DiT → `denoise` (entering it starts step 0), VAE encode →
`image_encode`, VAE decode → `decode`. A two-stage pipeline's second pass runs inside
`refining()`, which files the text side's and the DiT's calls under `refine` (it starts
its own steps). Block-level hooks are the caller's (the recorder installs its own).

On meta two more things are needed, and installed only then. The scheduler's timesteps
must stay real (the pipeline compares them with the expert boundary, the scheduler indexes
with them), so `set_timesteps` is pinned to the CPU; the timestep tensor the pipeline then
hands its transformer is a CPU tensor, moved to the component's device on entry.

`close()` removes every hook, wrapper and pin: the pipeline is as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from resbench.engines.roles import STEPPED_STAGES, ComponentRole, EngineModel
from resbench.pipeline import PipelineHooks

#: The stages a second pass (`refining`) files its text-side and denoiser calls under.
REFINE = "refine"
_REFINED = ("text_encode", "denoise")


def stages_of(role: ComponentRole, *, refine: bool = False) -> tuple[str, ...]:
    """The stages `role`'s component is called in (with a second pass: `refine` too)."""
    stages = tuple(dict.fromkeys(stage for _, stage in role.calls))
    # A text encoder the engine calls itself runs once, before the first pass.
    if refine and role.text is None and any(s in _REFINED for s in stages):
        stages += (REFINE,)
    return stages


def _on_meta(pipe: Any, model: EngineModel) -> bool:
    return any(next(getattr(pipe, r.name).parameters()).is_meta for r in model.components)


class PipelineHookBridge:
    """Calls `hooks`' stage, step and component callbacks while `pipe` runs (module doc)."""

    def __init__(self, pipe: Any, model: EngineModel, hooks: PipelineHooks) -> None:
        self.hooks = hooks
        self.stage = ""
        self._handles: list[Any] = []
        self._undo: list[Callable[[], None]] = []
        self._refining = False
        self.meta = _on_meta(pipe, model)
        for role in model.components:
            module = getattr(pipe, role.name)
            for method, stage in role.calls:
                if method == "forward":
                    self._bracket_forward(module, role.name, stage, align=self.meta)
                elif hasattr(module, method):
                    self._bracket_method(module, method, role.name, stage)
        if self.meta:
            self.pin_timesteps_to_cpu(pipe.scheduler)
            for cls in type(pipe).__mro__:
                if cls.__name__ in META_ADJUSTMENTS:
                    META_ADJUSTMENTS[cls.__name__](self, pipe)

    # -- callbacks -----------------------------------------------------------------------------
    def _enter(self, component: str, stage: str) -> None:
        if self._refining and stage in _REFINED:
            stage = REFINE
        if stage != self.stage:
            if self.stage:
                self.hooks.stage_exit(self.stage)
            self.stage = stage
            self.hooks.stage_enter(stage)
            if stage in STEPPED_STAGES:
                self.hooks.step(0)
        self.hooks.component_enter(component)

    @contextmanager
    def refining(self, scheduler: Any) -> Iterator[None]:
        """The second pass of a two-stage pipeline, with `scheduler` (pinned on meta)."""
        self._refining = True
        if self.meta:
            self.pin_timesteps_to_cpu(scheduler)
        try:
            yield
        finally:
            self._refining = False

    def on_step_end(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """`callback_on_step_end`: the calls that follow belong to the next step."""
        self.hooks.step(step + 1)
        return {}

    def finish(self) -> None:
        """End the stage in progress (the run's last); `close()` calls it too."""
        if self.stage:
            self.hooks.stage_exit(self.stage)
            self.stage = ""

    # -- installing and removing --------------------------------------------------------------
    def _bracket_forward(self, module: nn.Module, component: str, stage: str, *, align: bool) -> None:
        device = next(module.parameters()).device

        def move(x: Any) -> Any:
            return x.to(device) if isinstance(x, torch.Tensor) and x.device != device else x

        def pre(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
            if align:
                args, kwargs = tree_map(move, (args, kwargs))
            self._enter(component, stage)
            return args, kwargs

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(
            lambda m, a, o: self.hooks.component_exit(component)))

    def _bracket_method(self, module: nn.Module, method: str, component: str, stage: str) -> None:
        previous = module.__dict__.get(method)
        original = getattr(module, method)

        @functools.wraps(original)
        def bracketed(*args: Any, **kwargs: Any) -> Any:
            self._enter(component, stage)
            out = original(*args, **kwargs)
            self.hooks.component_exit(component)
            return out

        setattr(module, method, bracketed)
        self.on_close(lambda: restore_attribute(module, method, previous))

    def pin_timesteps_to_cpu(self, scheduler: Any) -> None:
        """Keep `scheduler`'s timesteps on the CPU (a meta run needs them real; module doc)."""
        original = scheduler.set_timesteps
        previous = scheduler.__dict__.get("set_timesteps")

        # `wraps` keeps the signature: pipelines inspect it for `sigmas` / `mu` support.
        @functools.wraps(original)
        def on_cpu(*args: Any, **kwargs: Any) -> Any:
            kwargs["device"] = "cpu"
            return original(*args, **kwargs)

        scheduler.set_timesteps = on_cpu
        self.on_close(lambda: restore_attribute(scheduler, "set_timesteps", previous))

    def on_close(self, undo: Callable[[], None]) -> None:
        """Run `undo` at `close()` (last registered, first run)."""
        self._undo.append(undo)

    def close(self) -> None:
        self.finish()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> PipelineHookBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flux2_grid_unpack(bridge: PipelineHookBridge, pipe: Any) -> None:
    """FLUX.2 scatters its output tokens into place by their position ids (`torch.max` of the
    ids sizes the grid), which meta ids cannot do. The ids are the full row-major grid that
    `_prepare_latent_ids` makes from the latents' shape, so the scatter is a reshape: on meta
    the grid is taken from that shape instead."""
    grid: dict[str, int] = {}
    prepare, unpack = pipe._prepare_latent_ids, pipe._unpack_latents_with_ids

    def prepare_ids(latents: torch.Tensor) -> torch.Tensor:
        grid["h"], grid["w"] = latents.shape[-2:]
        return prepare(latents)

    def unpack_grid(x: torch.Tensor, x_ids: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], grid["h"], grid["w"], x.shape[-1]).permute(0, 3, 1, 2)

    for name, original, new in (("_prepare_latent_ids", prepare, prepare_ids),
                                ("_unpack_latents_with_ids", unpack, unpack_grid)):
        bridge.on_close(functools.partial(restore_attribute, pipe, name, pipe.__dict__.get(name)))
        setattr(pipe, name, functools.wraps(original)(new))


#: Per pipeline class, what else a meta run needs (installed on meta only, undone at close).
META_ADJUSTMENTS: dict[str, Callable[[PipelineHookBridge, Any], None]] = {
    "Flux2Pipeline": _flux2_grid_unpack,
}


def restore_attribute(obj: object, name: str, previous: object | None) -> None:
    """Undo an instance attribute set over a class attribute (or over `previous`)."""
    if previous is None:
        delattr(obj, name)
    else:
        setattr(obj, name, previous)
