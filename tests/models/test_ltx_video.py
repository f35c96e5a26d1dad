from __future__ import annotations

import pytest
import torch

from resbench.errors import InputError
from resbench.models import get_model
from resbench.models.base import build_component, unit_infos
from resbench.models.ltx_video import LTX_2B, ltx_rope_angles
from resbench.pipeline import Request
from resbench.testing.zoo import check_full_size_on_meta, run_tiny

# Computed from the 0.9.0 constructor numbers (no published reference to compare with).
LTX_VAE_090_PARAMS = 419_193_649


def test_full_size_counts():
    spec = get_model("ltx-video")
    assert spec.component("vae").published_params is None
    counts = check_full_size_on_meta(spec, rel_tol=0.0)
    assert counts == {
        "text_encoder": 4_762_310_656,
        "transformer": 1_923_385_472,
        "vae": LTX_VAE_090_PARAMS,
    }


def test_transformer_block_size_matches_published():
    units = unit_infos(
        "transformer", build_component(get_model("ltx-video").component("transformer"))
    )
    assert len(units) == 28 + 1
    assert {u.params for u in units[:-1]} == {67_155_968}


def test_rope_covers_full_width_with_one_unrotated_pair():
    angles = ltx_rope_angles(LTX_2B, 3, 4, 5, torch.device("cpu"))
    assert angles.shape == (60, LTX_2B.dim // 2)  # 2048 / 2 = 3 · 341 + 1
    assert torch.equal(angles[:, 0], torch.zeros(60))


def test_tiny_pipeline_runs():
    spec = get_model("ltx-video")
    run = run_tiny(spec, height=64, width=96, frames=9)
    assert run.latents.shape == (1, 128, 2, 2, 3)


def test_validate_rules():
    spec = get_model("ltx-video")
    request = Request.for_model(spec)
    assert (request.frames, request.cfg, request.cfg_mode) == (161, True, "batched")
    with pytest.raises(InputError, match=r"8·k\+1"):
        Request.for_model(spec, frames=160)
    with pytest.raises(InputError, match="multiple of 32"):
        Request.for_model(spec, height=500)
