"""Engines: where pipelines come from. This package holds the diffusers engine.

* `build_pipeline(name, scale=, overrides=, device=)` → the real diffusers pipeline
  (`WanPipeline`, `FluxPipeline`) built from the configs shipped in `configs/`, on meta or
  with seeded random weights (`materialize`).
* `residency_units(pipe)` → per component, its ordered residency units (blocks + `rest`).
* `record_schedule(name, request)` / `record_pipeline(pipe, model, request)` → the
  `Schedule` of a request, recorded on meta through removable hooks on the real modules.
* `run_pipeline(pipe, model, request)` → run a request (text encoders called with token
  ids: no tokenizers), e.g. on a pipeline materialized on CPU.
* `DiffusersEngine` → all of the above behind what a zoo `ModelSpec` / `Pipeline` give the
  rest of resbench (components with kinds, units, uses, `record`, `run(request, hooks)`).
"""

from resbench.engines.build import build_pipeline, materialize, pipeline_configs
from resbench.engines.catalog import ENGINE_MODELS, EngineModel, get_engine_model
from resbench.engines.engine import DiffusersEngine
from resbench.engines.hooks import PipelineHookBridge
from resbench.engines.record import DiffusersRecorder, record_pipeline, record_schedule
from resbench.engines.run import default_request, run_pipeline
from resbench.engines.units import Unit, component_units, residency_units

__all__ = [
    "ENGINE_MODELS", "DiffusersEngine", "DiffusersRecorder", "EngineModel",
    "PipelineHookBridge", "Unit", "build_pipeline",
    "component_units", "default_request", "get_engine_model", "materialize", "pipeline_configs",
    "record_pipeline", "record_schedule", "residency_units", "run_pipeline",
]
