"""LTX-2's stage 2 on a merged copy of its DiT: the schedule the simulator plans the LoRA from."""

from __future__ import annotations

import pytest
import test_seed_models as seed  # the module pytest imported: its recorded schedules are shared
import torch

from resbench.drivers.replay import simulate
from resbench.engines.lora import adapted_linears
from resbench.errors import InputError
from resbench.hardware import get_profile
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan, ResidentConfig, SnapshotConfig

LORA = "ltx-2-19b-distilled-lora-384"


def test_stage_2_runs_a_merged_copy_priced_from_the_published_rank() -> None:
    engine = seed.engine(seed.LTX2)
    recorded = seed.schedule(seed.LTX2)
    s = engine.merged_refine(recorded, dtype=torch.float32)
    assert {(c.stage, c.component) for c in s.calls if c.component.startswith("transformer")} == {
        ("denoise", "transformer"), ("refine", "transformer_2")}
    assert s.component_bytes("transformer_2") == recorded.component_bytes("transformer")
    assert s.merged == {"transformer_2": (LORA,)}
    (merge,) = s.merges
    dit = engine.components("meta", dtype=torch.float32)["transformer"]
    paths = adapted_linears(dit, engine.model.refine.lora)
    assert paths and all(p.startswith("transformer_blocks.") for p in paths)
    shapes = [dit.get_submodule(p).weight.shape for p in paths]
    assert merge.linears == len(paths)
    assert merge.gemm_fp32_flops == sum(2 * o * 384 * i for o, i in shapes)  # fp32 schedule
    assert merge.before_call == next(c.index for c in s.calls if c.component == "transformer_2")


def test_the_three_lora_choices_are_priced_apart() -> None:
    s = seed.engine(seed.LTX2).merged_refine(seed.schedule(seed.LTX2), dtype=torch.float32)
    profile = get_profile("h100-80g")
    latency = {}
    for name, cfg in (("resident", ResidentConfig()), ("snapshot", SnapshotConfig()),
                      ("re-merge", OffloadConfig())):
        plan = Plan(components=(("default", OffloadConfig()), ("transformer_2", cfg)))
        latency[name] = simulate(s, plan, profile).latency_s
    assert latency["resident"] < latency["snapshot"] < latency["re-merge"]
    with pytest.raises(InputError, match="transformer_2 cannot be layerwise"):
        simulate(s, Plan(components=(("dit", LayerwiseConfig()),)), profile)
