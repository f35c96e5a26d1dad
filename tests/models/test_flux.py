from __future__ import annotations

import pytest
import torch

from resbench.errors import InputError
from resbench.models import get_model
from resbench.models.base import build_component, unit_infos
from resbench.models.mmdit import patchify, unpatchify
from resbench.pipeline import Request
from resbench.testing.zoo import check_full_size_on_meta, run_tiny, tiny_modules


def test_full_size_counts_are_exact():
    spec = get_model("flux")
    assert spec.name == "flux.1-dev"
    counts = check_full_size_on_meta(spec, rel_tol=0.0)
    assert counts == {
        "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
        "transformer": 11_901_408_320,
        "vae": 83_819_683,
    }


def test_transformer_units_match_published_block_sizes():
    units = unit_infos("transformer", build_component(get_model("flux").component("transformer")))
    by_name = {u.name: u.params for u in units}
    assert len(units) == 19 + 38 + 1
    assert by_name["double_blocks.0"] == 339_831_296
    assert by_name["single_blocks.37"] == 141_591_808
    assert by_name["rest"] == 64_124_992


def test_tiny_pipeline_runs():
    spec = get_model("flux")
    run = run_tiny(spec, height=64, width=48)
    assert run.text["text_encoder"].ndim == 2  # CLIP pooled
    assert run.text["text_encoder_2"].shape[1] == 512


def test_guidance_changes_the_output():
    spec = get_model("flux")
    mods = tiny_modules(spec)
    dit = mods["transformer"]
    x = torch.randn(1, 16, 4, 4)
    cond = {
        "text_encoder": torch.randn(1, dit.cfg.vec_in_dim),
        "text_encoder_2": torch.randn(1, 7, dit.cfg.context_in_dim),
    }
    with torch.no_grad():
        a = dit(x, torch.tensor([300.0]), cond)
        b = dit(x, torch.tensor([300.0]), {**cond, "guidance": torch.tensor([1.0])})
    assert not torch.allclose(a, b)


def test_patchify_roundtrip():
    x = torch.randn(2, 16, 6, 10)
    tokens = patchify(x, 1, 2)
    assert tokens.shape == (2, 15, 64)
    assert torch.equal(unpatchify(tokens, x.shape, 1, 2), x)
    v = torch.randn(1, 4, 3, 4, 6)
    assert torch.equal(unpatchify(patchify(v, 1, 2), v.shape, 1, 2), v)


def test_validate_rejects_sizes_not_multiple_of_16():
    spec = get_model("flux.1-dev")
    assert Request.for_model(spec).steps == 28
    with pytest.raises(InputError, match="multiple of 16"):
        Request.for_model(spec, height=1000)
    with pytest.raises(InputError, match="frames must be 1"):
        Request.for_model(spec, frames=5)
