"""Engines: where pipelines come from. This package holds the diffusers engine.

* `build_pipeline(name, scale=, overrides=, device=, dtype=)` → the real diffusers pipeline
  (`WanPipeline`, `FluxPipeline`, `Flux2Pipeline`, `QwenImagePipeline`, `LTX2Pipeline`) built
  from the configs shipped in `configs/`, on meta or with seeded random weights
  (`materialize`). What a model is beyond its files (component roles, text inputs, LTX-2's
  second stage and its LoRA's facts) is in `catalog` (data types in `roles`); `specs` gives
  the models the zoo lacks their request defaults and rules.
* `residency_units(pipe)` → per component, its ordered residency units (blocks + `rest`).
* `record_schedule(name, request)` / `record_pipeline(pipe, model, request)` → the
  `Schedule` of a request, recorded on meta through removable hooks on the real modules.
* `run_pipeline(pipe, model, request)` → run a request (text encoders called with token
  ids: no tokenizers), e.g. on a pipeline materialized on CPU.
* `DiffusersPipeline` → all of the above behind what a zoo `ModelSpec` / `Pipeline` give the
  rest of resbench (components with kinds, units, uses, `record`, `run(request, hooks)`).
* `apply_plan(pipe, plan)` → a user's own pipeline under a plan until `handle.remove()`.
* `Engine` (`base`), `ZooEngine` (`zoo`), `DiffusersEngine` (`diffusers_engine`) → where a
  model's pipelines come from, for the execution layer (`--engine`).

Names are imported on first use, so that importing one light module of the package (the
CLI does) does not import diffusers and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "apply_plan": "apply", "ResidencyHandle": "apply",
    "Engine": "base", "default_engine": "base", "make_engine": "base",
    "DiffusersEngine": "diffusers_engine", "ZooEngine": "zoo",
    "build_pipeline": "build", "materialize": "build", "pipeline_configs": "build",
    "ENGINE_MODELS": "catalog", "EngineModel": "catalog", "get_engine_model": "catalog",
    "LoraFacts": "roles", "RefineStage": "roles",
    "DiffusersPipeline": "pipeline",
    "PipelineHookBridge": "hooks",
    "DiffusersRecorder": "record", "record_pipeline": "record", "record_schedule": "record",
    "default_request": "run", "run_pipeline": "run",
    "Unit": "units", "component_units": "units", "residency_units": "units",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
