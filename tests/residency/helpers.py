"""Tiny managed runs on the CPU device, shared by the residency tests."""

from __future__ import annotations

import copy
import functools

import torch

from resbench.devices.cpu import CpuDevice
from resbench.drivers.torch_driver import TorchDriver
from resbench.models import get_model
from resbench.models.base import build_component, materialize
from resbench.pipeline import Pipeline, Request, unit_slots_of
from resbench.record import record_schedule
from resbench.residency import Plan, ResidencyManager
from resbench.schedule import Schedule

SCALE = 0.05


def tiny_request(model: str) -> Request:
    spec = get_model(model)
    frames = 5 if spec.is_video else 1
    if spec.name == "ltx-video":
        frames = 9
    size = 64 if spec.latent.vae_stride_s * spec.latent.patch_s > 16 else 32
    return Request(height=size, width=size, frames=frames, steps=2, guidance=3.0,
                   cfg=spec.defaults.cfg, cfg_mode=spec.defaults.cfg_mode)


@functools.cache
def tiny_schedule(model: str) -> Schedule:
    return record_schedule(get_model(model), tiny_request(model), scale=SCALE, dtype=torch.float32)


@functools.cache
def _tiny_states(model: str) -> dict[str, dict[str, torch.Tensor]]:
    spec = get_model(model)
    return {c.name: materialize(build_component(c, SCALE), "cpu", seed=0).float().state_dict(keep_vars=False)
            for c in spec.components}


@functools.cache
def _tiny_modules(model: str) -> dict[str, torch.nn.Module]:
    """The model's float32 modules with its seeded weights, built once; never run, only
    copied by `tiny_components`."""
    spec = get_model(model)
    out = {}
    for c in spec.components:
        module = build_component(c, SCALE).float().to_empty(device="cpu")
        module.load_state_dict({k: v.clone() for k, v in _tiny_states(model)[c.name].items()},
                               strict=False)
        for mod in module.modules():
            init = getattr(mod, "_init_buffers", None)
            if callable(init):
                init()
        out[c.name] = module
    return out


def tiny_components(model: str) -> dict[str, torch.nn.Module]:
    """Fresh float32 modules with the model's seeded weights: deep copies (a third of the
    time of building each again) of modules materialised once per model."""
    return {name: copy.deepcopy(module) for name, module in _tiny_modules(model).items()}


@functools.cache
def reference_output(model: str) -> torch.Tensor:
    spec = get_model(model)
    pipe = Pipeline(spec, tiny_components(model), dtype=torch.float32, scale=SCALE)
    return pipe.run(tiny_request(model))


def managed_run(model: str, plan: Plan, capacity_bytes: int = 1 << 62):
    """Run `plan` on the CPU device; returns (output, manager, device)."""
    spec = get_model(model)
    pipe = Pipeline(spec, tiny_components(model), dtype=torch.float32, scale=SCALE)
    device = CpuDevice(unit_slots_of(pipe), capacity_bytes=capacity_bytes)
    schedule = tiny_schedule(model)
    manager = ResidencyManager(schedule, plan, device, kinds=schedule.kinds)
    out = TorchDriver(pipe, manager).run(tiny_request(model))
    return out, manager, device
