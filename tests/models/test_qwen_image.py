from __future__ import annotations

import pytest
import torch

from resbench.errors import InputError
from resbench.models import get_model
from resbench.models.base import build_component, materialize, unit_infos
from resbench.models.qwen_vl import QWEN25_VL_7B_VISION, VisionTower
from resbench.pipeline import Request
from resbench.testing.zoo import check_full_size_on_meta, run_tiny, tiny_modules


def test_full_size_counts_are_exact():
    counts = check_full_size_on_meta(get_model("qwen-image"), rel_tol=0.0)
    assert counts == {
        "text_encoder": 8_292_166_656,
        "transformer": 20_430_401_088,
        "vae": 126_892_531,
    }


def test_units_match_published_breakdown():
    spec = get_model("qwen-image")
    dit = {
        u.name: u.params
        for u in unit_infos("transformer", build_component(spec.component("transformer")))
    }
    assert len(dit) == 60 + 1
    assert dit["blocks.0"] == 339_831_296 and dit["rest"] == 40_523_328

    te = unit_infos("text_encoder", build_component(spec.component("text_encoder")))
    layers = [u for u in te if u.name.startswith("layers.")]
    vision = [u for u in te if u.name.startswith("visual.blocks.")]
    assert len(layers) == 28 and {u.params for u in layers} == {233_057_792}
    assert len(vision) == 32
    assert [u.name for u in te].index("visual.blocks.0") > [u.name for u in te].index("layers.27")
    rest = te[-1].params
    # Vision tower 676,550,144 = its blocks + patch embed and merger (in rest, with the
    # embedding, final norm and lm_head of 544,997,376 each).
    assert sum(u.params for u in vision) + rest == 676_550_144 + 2 * 544_997_376 + 3584


def test_text_encoding_does_not_run_the_vision_tower():
    spec = get_model("qwen-image")
    encoder = tiny_modules(spec)["text_encoder"]
    called = []
    for block in encoder.visual.blocks:
        block.register_forward_hook(lambda *_: called.append(1))
    with torch.no_grad():
        out = encoder(torch.randint(0, 100, (2, 40)))
    assert out.shape == (2, 40 - encoder.drop_prefix, encoder.cfg.dim)
    assert not called


def test_tiny_pipeline_runs():
    run = run_tiny(get_model("qwen-image"), height=48, width=64)
    assert run.latents.shape == (1, 16, 6, 8)


def test_vision_tower_forward_shapes():
    cfg = QWEN25_VL_7B_VISION.scaled(0.05)
    tower = materialize(VisionTower(cfg), "cpu", seed=0)
    with torch.no_grad():
        out = tower(torch.randn(1, 8, 3, 2, 14, 14))
    assert out.shape == (1, 2, cfg.out_dim)


def test_validate_rules():
    spec = get_model("qwen-image")
    request = Request.for_model(spec)
    assert (request.height, request.steps, request.passes_per_step) == (1024, 50, 2)
    with pytest.raises(InputError, match="multiple of 16"):
        Request.for_model(spec, height=1000)
