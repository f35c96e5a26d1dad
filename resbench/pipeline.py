"""Requests, stages and the pipeline that runs a zoo model end to end.

Text encoding → (I2V: image encoding) → denoising loop (flow matching with the model's
shift; CFG as two passes or one batch of two; Wan2.2's expert switch at the boundary
timestep) → VAE decode. Stages declare the components they use (`ComponentUse`), which is
what the residency manager plans from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
from torch import nn

from resbench.adapters import LoraAdapter
from resbench.errors import InputError
from resbench.models.base import ModelSpec, ResidencyComponent, TensorSlot, unit_slots
from resbench.schedule import ComponentUse


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One generation request. Frames is 1 for image models."""

    height: int
    width: int
    frames: int = 1
    steps: int
    guidance: float
    cfg: bool = True
    cfg_mode: Literal["sequential", "batched"] = "sequential"
    batch: int = 1
    seed: int = 0

    @classmethod
    def for_model(cls, spec: ModelSpec, **overrides: object) -> Request:
        """The model's default request with `overrides` (None values are ignored)."""
        d = spec.defaults
        base = cls(height=d.height, width=d.width, frames=d.frames, steps=d.steps,
                   guidance=d.guidance, cfg=d.cfg, cfg_mode=d.cfg_mode)
        request = replace(base, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
        validate_request(spec, request)
        return request

    @property
    def passes_per_step(self) -> int:
        """Denoiser calls per step: 2 with sequential CFG, else 1."""
        return 2 if self.cfg and self.cfg_mode == "sequential" else 1


def validate_request(spec: ModelSpec, request: Request) -> None:
    """Raise `InputError` stating the rule a request breaks for this model."""
    for name in ("height", "width", "frames", "steps", "batch"):
        value = getattr(request, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"request {name} must be a positive integer, got {value!r}")
    if request.cfg_mode not in ("sequential", "batched"):
        raise InputError(f"request cfg_mode must be 'sequential' or 'batched', got {request.cfg_mode!r}")
    if not spec.is_video and request.frames != 1:
        raise InputError(f"{spec.name} makes images: frames must be 1, got {request.frames}")
    if spec.validate is not None:
        spec.validate(request)


# ---------------------------------------------------------------------------------------------
# Scheduler


def flow_sigmas(steps: int, shift: float) -> list[float]:
    """Shifted flow-matching sigmas, one per step plus the final 0 (Wan's UniPC/Euler grid).

    u_i = 0.999 (1 - i/N); sigma = s u / (1 + (s - 1) u) (Wan2.2 `fm_solvers_unipc.py`).
    """
    out = []
    for i in range(steps):
        u = 0.999 * (1 - i / steps)
        out.append(shift * u / (1 + (shift - 1) * u))
    return [*out, 0.0]


def expert_for_step(spec: ModelSpec, sigma: float) -> str:
    """Which denoiser runs at this sigma (Wan2.2 A14B: high-noise while t >= boundary·1000)."""
    if len(spec.dits) == 1 or spec.boundary is None:
        return spec.dits[0]
    return spec.dits[0] if int(1000 * sigma) >= spec.boundary * 1000 else spec.dits[1]


def step_plan(spec: ModelSpec, request: Request) -> list[tuple[int, str, float, float]]:
    """(step, denoiser, sigma, next sigma) for every denoising step of the request."""
    sig = flow_sigmas(request.steps, spec.defaults.shift)
    return [(i, expert_for_step(spec, sig[i]), sig[i], sig[i + 1]) for i in range(request.steps)]


# ---------------------------------------------------------------------------------------------
# Stages and the pipeline


class PipelineHooks:
    """Callbacks a driver receives while the pipeline runs (defaults do nothing).

    `component_call` brackets every call of a component's entry point; block-level calls are
    seen through module hooks the driver installs itself. `repeat_step` is asked before each
    denoising step: a recorder answers True to replay a step it has already seen instead of
    running it (the pipeline then skips the step's compute but still calls `step_skipped`).
    """

    def stage_enter(self, stage: str) -> None: ...
    def stage_exit(self, stage: str) -> None: ...
    def step(self, step: int) -> None: ...
    def component_enter(self, component: str) -> None: ...
    def component_exit(self, component: str) -> None: ...

    def repeat_step(self, step: int, denoiser: str) -> bool:
        return False

    def step_skipped(self, step: int, denoiser: str) -> None: ...

    def merge(self, component: str, adapter: LoraAdapter) -> bool:
        """`adapter` must be merged into `component` before its next call. True: the hooks see
        to it (a residency manager merges on the device, or knows the copy it loads is
        merged; a recorder records the merge); False: the pipeline merges it itself, once
        (`resbench.adapters.ensure_merged`)."""
        return False


class ManagedPipeline(Protocol):
    """What the torch driver and the real devices need from a pipeline to run it under the
    residency manager. The zoo's `Pipeline` gives it, and so does the diffusers engine's
    `resbench.engines.DiffusersPipeline`: nothing downstream asks which one it holds.

    * `components`: component name → module.
    * `blocks(component)`: (unit name, module) of each block unit, in unit order — the driver
      hooks every block's forward to follow the schedule call by call.
    * `unit_slots(component)`: unit name → the (module, attribute) slots of the unit's
      parameters and buffers, blocks in order then `rest`, each tensor once — a device moves a
      unit by rebinding these slots.
    * `run(request, hooks)`: run one request, calling `hooks`' stage, step and component
      callbacks (`PipelineHooks`) around every component entry point.
    * `adapters()`: (component, adapter name) → the `LoraAdapter` the pipeline merges into
      that component during a request (empty for most pipelines): the manager may merge it
      before the request (a resident merged copy, a snapshot), so it must be known up front.

    Unit names are the schedule's: a schedule recorded from a pipeline names its units.
    """

    @property
    def components(self) -> Mapping[str, nn.Module]: ...

    def blocks(self, component: str) -> list[tuple[str, nn.Module]]: ...

    def unit_slots(self, component: str) -> dict[str, list[TensorSlot]]: ...

    def run(self, request: Request, hooks: PipelineHooks | None = None) -> torch.Tensor: ...

    def adapters(self) -> dict[tuple[str, str], LoraAdapter]: ...


UnitSlots = dict[str, dict[str, list[TensorSlot]]]
"""Component → unit → the slots of its tensors: what a device is built from."""


def unit_slots_of(pipe: ManagedPipeline) -> UnitSlots:
    """Every component's unit slots (`ManagedPipeline.unit_slots`)."""
    return {name: pipe.unit_slots(name) for name in pipe.components}


@dataclass
class RunState:
    """Tensors carried between stages."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor]
    latents: torch.Tensor | None = None
    output: torch.Tensor | None = None


class Stage(ABC):
    """A pipeline stage: a name, the components it uses, and `run`.

    `uses` declares, before the request starts, every component the stage will call (the
    residency manager plans from these); `run` reads and writes `state` and calls components
    only through `pipe.call`, so drivers see every component entry.
    """

    name: str = ""

    @abstractmethod
    def uses(self) -> list[ComponentUse]:
        """The stage's component uses, in the order it calls them."""

    @abstractmethod
    def run(self, pipe: Pipeline, request: Request, state: RunState, hooks: PipelineHooks) -> None:
        """Run the stage for `request`, reading and updating `state`."""


class TextEncodeStage(Stage):
    name = "text_encode"

    def __init__(self, encoders: tuple[str, ...]) -> None:
        self.encoders = encoders

    def uses(self) -> list[ComponentUse]:
        return [ComponentUse(self.name, c, phase=i) for i, c in enumerate(self.encoders)]

    def run(self, pipe: Pipeline, request: Request, state: RunState, hooks: PipelineHooks) -> None:
        gen = torch.Generator().manual_seed(request.seed)
        for name in self.encoders:
            length = pipe.text_len(name)
            prompts = 2 if request.cfg else 1
            ids = torch.randint(0, 64, (prompts, request.batch, length), generator=gen)
            ids = ids.to(pipe.device)
            if request.cfg and request.cfg_mode == "batched":
                out = pipe.call(name, hooks, ids.reshape(prompts * request.batch, length))
                state.cond[name], state.uncond[name] = out.chunk(2)
            else:
                state.cond[name] = pipe.call(name, hooks, ids[0])
                if request.cfg:
                    state.uncond[name] = pipe.call(name, hooks, ids[1])


class ImageEncodeStage(Stage):
    """I2V: the VAE encodes the conditioning clip (first frame + zeros) once."""

    name = "image_encode"

    def __init__(self, vae: str) -> None:
        self.vae = vae

    def uses(self) -> list[ComponentUse]:
        return [ComponentUse(self.name, self.vae)]

    def run(self, pipe: Pipeline, request: Request, state: RunState, hooks: PipelineHooks) -> None:
        gen = torch.Generator().manual_seed(request.seed + 1)
        clip = torch.zeros(request.batch, 3, request.frames, request.height, request.width)
        clip[:, :, 0] = torch.rand(request.batch, 3, request.height, request.width, generator=gen)
        latent = pipe.call(self.vae, hooks, clip.to(pipe.device, pipe.dtype), method="encode")
        mask = torch.zeros(latent.shape[0], 4, *latent.shape[2:], device=latent.device,
                           dtype=latent.dtype)
        mask[:, :, 0] = 1
        image = torch.cat([mask, latent], dim=1)
        state.cond["image_latents"] = image
        state.uncond["image_latents"] = image


class DenoiseStage(Stage):
    name = "denoise"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def uses(self) -> list[ComponentUse]:
        return [ComponentUse(self.name, d, phase=i) for i, d in enumerate(self.spec.dits)]

    def run(self, pipe: Pipeline, request: Request, state: RunState, hooks: PipelineHooks) -> None:
        assert state.latents is not None
        x = state.latents
        b = request.batch
        for step, dit, sigma, sigma_next in step_plan(self.spec, request):
            hooks.step(step)
            if hooks.repeat_step(step, dit):
                hooks.step_skipped(step, dit)
                continue
            t = torch.full((b,), sigma * 1000.0, device=pipe.device, dtype=torch.float32)
            if not request.cfg:
                v = pipe.call(dit, hooks, x, t, state.cond)
            elif request.cfg_mode == "batched":
                both = {k: torch.cat([state.cond[k], state.uncond[k]]) for k in state.cond}
                v_c, v_u = pipe.call(dit, hooks, torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
                v = v_u + request.guidance * (v_c - v_u)
            else:
                v_c = pipe.call(dit, hooks, x, t, state.cond)
                v_u = pipe.call(dit, hooks, x, t, state.uncond)
                v = v_u + request.guidance * (v_c - v_u)
            x = (x.float() + (sigma_next - sigma) * v.float()).to(x.dtype)
        state.latents = x


class DecodeStage(Stage):
    name = "decode"

    def __init__(self, vae: str) -> None:
        self.vae = vae

    def uses(self) -> list[ComponentUse]:
        return [ComponentUse(self.name, self.vae)]

    def run(self, pipe: Pipeline, request: Request, state: RunState, hooks: PipelineHooks) -> None:
        state.output = pipe.call(self.vae, hooks, state.latents, method="decode")


def latent_shape(spec: ModelSpec, request: Request) -> tuple[int, ...]:
    g = spec.latent
    h, w = request.height // g.vae_stride_s, request.width // g.vae_stride_s
    if spec.is_video:
        return (request.batch, g.z_channels, g.latent_frames(request.frames), h, w)
    return (request.batch, g.z_channels, h, w)


class Pipeline:
    """A zoo model's components wired into stages: text → (image) → denoise → decode.

    `components` are modules already placed (meta for recording, CPU/GPU for real runs);
    `device`/`dtype` are where and in which type the pipeline makes its own tensors.
    """

    def __init__(self, spec: ModelSpec, components: dict[str, nn.Module], *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                 scale: float = 1.0) -> None:
        self.spec = spec
        self.scale = scale
        self.components = components
        self.device = torch.device(device)
        self.dtype = dtype

    def stages(self) -> list[Stage]:
        s = self.spec
        out: list[Stage] = [TextEncodeStage(s.text_encoders)]
        if s.image_conditioning:
            out.append(ImageEncodeStage(s.vae))
        out += [DenoiseStage(s), DecodeStage(s.vae)]
        return out

    def uses(self) -> list[ComponentUse]:
        return [u for st in self.stages() for u in st.uses()]

    def blocks(self, component: str) -> list[tuple[str, nn.Module]]:
        """(unit name, module) of every block of `component` (`ManagedPipeline`)."""
        module = self.components[component]
        if not isinstance(module, ResidencyComponent):
            return []
        return [(f"{path}.{i}", block) for path, blocks in module.block_lists()
                for i, block in enumerate(blocks)]

    def unit_slots(self, component: str) -> dict[str, list[TensorSlot]]:
        """Unit name → slots of its tensors (`models.base.unit_slots`)."""
        return unit_slots(self.components[component])

    def adapters(self) -> dict[tuple[str, str], LoraAdapter]:
        """No zoo model merges an adapter (`ManagedPipeline`)."""
        return {}

    def text_len(self, encoder: str) -> int:
        """Prompt tokens for `encoder`: the model's length, shortened for scaled-down models."""
        full = self.spec.component(encoder).text_len
        return full if self.scale >= 1 else max(16, round(full * self.scale))

    def call(self, name: str, hooks: PipelineHooks, *args: object, method: str = "forward") -> torch.Tensor:
        hooks.component_enter(name)
        out = getattr(self.components[name], method)(*args)
        hooks.component_exit(name)
        return out

    @torch.no_grad()
    def run(self, request: Request, hooks: PipelineHooks | None = None) -> torch.Tensor:
        """Run the whole request; returns the decoded output (video or image)."""
        hooks = hooks or PipelineHooks()
        gen = torch.Generator().manual_seed(request.seed)
        latents = torch.randn(latent_shape(self.spec, request), generator=gen)
        state = RunState(cond={}, uncond={}, latents=latents.to(self.device, self.dtype))
        for stage in self.stages():
            hooks.stage_enter(stage.name)
            stage.run(self, request, state, hooks)
            hooks.stage_exit(stage.name)
        assert state.output is not None
        return state.output
