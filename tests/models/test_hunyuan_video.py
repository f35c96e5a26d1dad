from __future__ import annotations

import pytest
import torch

from resbench.errors import InputError
from resbench.models import get_model
from resbench.models.base import build_component, materialize, unit_infos
from resbench.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVideoVAE
from resbench.models.llama import scaled_prefix
from resbench.pipeline import Request
from resbench.testing.zoo import check_full_size_on_meta, run_tiny


def test_full_size_counts_match_computed():
    spec = get_model("hunyuan-video")
    assert spec.name == "hunyuanvideo"
    counts = check_full_size_on_meta(spec, rel_tol=0.0)
    assert counts == {
        "text_encoder": 7_505_186_816,
        "text_encoder_2": 123_060_480,
        "transformer": 12_821_012_544,
        "vae": 246_478_803,
    }


def test_refiner_blocks_are_their_own_units_and_run_first():
    units = unit_infos(
        "transformer", build_component(get_model("hunyuanvideo").component("transformer"))
    )
    names = [u.name for u in units]
    assert names[:3] == ["token_refiner.blocks.0", "token_refiner.blocks.1", "double_blocks.0"]
    assert len(units) == 2 + 20 + 40 + 1
    by_name = {u.name: u.params for u in units}
    assert by_name["double_blocks.0"] == 339_831_296
    assert by_name["single_blocks.0"] == 141_591_808
    refiner = by_name["token_refiner.blocks.0"] + by_name["token_refiner.blocks.1"]
    # models.md: refiner 309,175,296 (blocks + its embedders) plus 51,539,008 of other rest.
    assert refiner + by_name["rest"] == 309_175_296 + 51_539_008


def test_tiny_pipeline_runs():
    spec = get_model("hunyuanvideo")
    run = run_tiny(spec, height=32, width=48, frames=5)
    assert run.text["text_encoder"].shape[1] == 351 - scaled_prefix(95, 0.05)
    assert run.latents.shape[2] == 2


def test_llm_drops_the_template_and_keeps_hidden_state_minus_3():
    llm = build_component(get_model("hunyuanvideo").component("text_encoder"))
    assert (llm.skip_last, llm.drop_prefix) == (2, 95)
    with torch.device("meta"):
        out = llm(torch.zeros(1, 351, dtype=torch.long))
    assert out.shape == (1, 256, 4096)


def test_vae_long_clips_go_through_temporal_tiles():
    vae = materialize(HunyuanVideoVAE(HUNYUAN_VAE.scaled(0.05)), "cpu", seed=0)
    with torch.no_grad():
        z = vae.encode(torch.randn(1, 3, 25, 16, 16))  # 25 frames > one 16-frame tile
        assert z.shape == (1, 16, 7, 2, 2)
        assert vae.decode(z).shape == (1, 3, 25, 16, 16)  # 7 latent frames > 4 per tile
        assert torch.isfinite(z).all()


def test_validate_rules():
    spec = get_model("hunyuanvideo")
    assert Request.for_model(spec).frames == 129
    with pytest.raises(InputError, match=r"4·k\+1"):
        Request.for_model(spec, frames=128)
    with pytest.raises(InputError, match="multiple of 16"):
        Request.for_model(spec, width=1270)
