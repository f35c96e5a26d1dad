"""The seed's models in the diffusers engine (LTX-2, FLUX.2-dev, Qwen-Image): full-size counts
against the published ones (on meta), schedules recorded at tiny scale, and managed runs
bitwise equal to unmanaged ones on the CPU device."""

from __future__ import annotations

import functools

import pytest
import torch

from resbench.devices.cpu import CpuDevice
from resbench.engines.build import build_pipeline
from resbench.engines.catalog import get_engine_model
from resbench.engines.diffusers_engine import DiffusersEngine
from resbench.engines.pipeline import DiffusersPipeline
from resbench.execution import Execution
from resbench.models import get_model
from resbench.pipeline import Request, unit_slots_of
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan
from resbench.schedule import Schedule
from resbench.trace import Tracer
from tests.engines.helpers import LTX2_TINY

LTX2 = "ltx-2"
CASES = {  # model → (tiny overrides, request)
    LTX2: (LTX2_TINY, Request(height=32, width=32, frames=1, steps=2, guidance=3.0, cfg=True,
                              cfg_mode="batched")),
}


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.cache
def engine(model: str) -> DiffusersEngine:
    return DiffusersEngine(get_model(model), overrides=CASES[model][0])


@functools.cache
def schedule(model: str) -> Schedule:
    return engine(model).record(CASES[model][1], dtype=torch.float32)


def fresh_pipeline(model: str) -> DiffusersPipeline:
    e = engine(model)
    return e.pipeline(e.components("cpu", dtype=torch.float32), device="cpu")


@functools.cache
def reference(model: str) -> torch.Tensor:
    return fresh_pipeline(model).run(CASES[model][1])


def test_ltx2_full_size_counts_match_the_published_ones():
    pipe = build_pipeline(LTX2)
    # The converter's config gives diffusers' defaults: 18,876,174,592 (../shared/reference/
    # models.md §9) for the "19B" of ltx-2-19b-dev; Gemma 3 12B with its vision tower.
    assert params(pipe.transformer) == 18_876_174_592
    assert params(pipe.text_encoder) == 12_187_325_040
    model = get_engine_model(LTX2)
    for role in model.components:
        if role.published is not None:
            counted = params(getattr(pipe, role.name))
            assert abs(counted - role.published.params) / role.published.params < 0.02
    assert all(t.is_meta for t in pipe.transformer.parameters())
    assert params(pipe.latent_upsampler) > 0 and "latent_upsampler" not in pipe.components


def test_ltx2_schedule_has_the_second_stage():
    s = schedule(LTX2)
    assert s.stage_order == ("text_encode", "denoise", "upsample", "refine", "decode")
    blocks = 2  # tiny transformer
    per_step = {stage: {c.step for c in s.calls if c.stage == stage
                        and c.component == "transformer"} for stage in ("denoise", "refine")}
    assert per_step == {"denoise": {0, 1}, "refine": {0, 1, 2}}  # 3 stage-2 sigmas
    # CFG (batched) + STG + modality guidance: three transformer calls per step, each
    # calling every block once and the rest once.
    stage2 = [c for c in s.calls if c.stage == "refine" and c.component == "transformer"]
    assert len(stage2) == 3 * 3 * (blocks + 1)
    assert {c.component for c in s.calls if c.stage == "upsample"} == {"latent_upsampler"}
    assert {c.component for c in s.calls if c.stage == "decode"} == {"vae", "audio_vae", "vocoder"}
    assert ("refine", "connectors") in {(u.stage, u.component) for u in s.uses}
    # Stage 2 runs at twice the size: its blocks do more work than stage 1's.
    first = max(c.flops for c in s.calls if c.stage == "denoise" and c.unit.endswith(".0"))
    assert max(c.flops for c in stage2 if c.unit.endswith(".0")) > 2 * first


def test_ltx2_lora_facts_are_data_about_a_component():
    model = get_engine_model(LTX2)
    lora = model.refine.lora
    assert lora.rank == 384 and lora.component == model.refine.dit == "transformer"
    assert model.role(lora.component).kind == "dit"


@pytest.mark.parametrize("model", sorted(CASES))
@pytest.mark.parametrize("plan", [
    Plan(policy="dynamic", buffer_margin_bytes=1 << 10,
         components=(("default", OffloadConfig(release="d2h")),)),
    Plan(policy="static", components=(
        ("default", LayerwiseConfig(group_size=1, prefetch_depth=2, resident_blocks=1)),)),
], ids=["offload-d2h-dynamic", "layerwise"])
def test_managed_output_is_bitwise_equal(model: str, plan: Plan):
    pipe = fresh_pipeline(model)
    device = CpuDevice(unit_slots_of(pipe), capacity_bytes=1 << 62)
    execution = Execution(schedule(model), plan, device, pipeline=pipe, tracer=Tracer())
    result = execution.run(CASES[model][1], keep_output=True)
    assert torch.equal(result.output, reference(model))
    assert execution.manager.leftover_units() == []
    assert result.h2d_bytes > 0
    # The run leaves the pipeline as it was (stage 2 swaps the scheduler and VAE tiling).
    assert type(pipe.pipe.scheduler.config.use_dynamic_shifting) is bool
    assert pipe.pipe.scheduler.config.use_dynamic_shifting is True
    assert pipe.pipe.vae.use_tiling is False
