from __future__ import annotations

import pytest
import torch
from torch import nn

from resbench.engines.build import build_pipeline
from resbench.engines.units import component_units, residency_units
from resbench.errors import InputError
from resbench.models.base import REST


@pytest.fixture(scope="module")
def wan():
    return build_pipeline("wan2.2-t2v-a14b")


@pytest.fixture(scope="module")
def flux():
    return build_pipeline("flux.1-dev")


def by_name(units):
    return {u.name: u for u in units}


def test_wan_expert_units(wan):
    units = residency_units(wan)
    assert list(units) == ["vae", "text_encoder", "transformer", "transformer_2"]
    dit = units["transformer"]
    assert [u.name for u in dit] == [f"blocks.{i}" for i in range(40)] + [REST]
    # models.md §2: 351,394,304 per block, 232,719,424 outside the blocks.
    assert {u.params for u in dit[:-1]} == {351_394_304}
    assert dit[-1].params == 232_719_424
    # bf16, but for the fp32 scale_shift_table (6 x 5120) and cross-attention norm (2 x 5120).
    fp32 = 6 * 5120 + 2 * 5120
    assert dit[0].weight_bytes == 2 * 351_394_304 + 2 * fp32
    assert [u.block_index for u in dit] == [*range(40), -1]


def test_text_encoder_units_count_the_tied_embedding_once(wan, flux):
    umt5 = residency_units(wan)["text_encoder"]
    assert len(umt5) == 25 and {u.params for u in umt5[:-1]} == {192_948_224}
    # 256,384 x 4096 shared embedding (also encoder.embed_tokens) + the final norm.
    assert umt5[-1].params == 256_384 * 4096 + 4096
    t5 = by_name(residency_units(flux)["text_encoder_2"])
    # T5-v1.1 has its relative attention bias (32 buckets x 64 heads) in layer 0 only.
    assert t5["encoder.block.0"].params == 192_946_176 + 32 * 64
    assert t5["encoder.block.1"].params == 192_946_176
    assert t5[REST].params == 32_128 * 4096 + 4096
    clip = residency_units(flux)["text_encoder"]
    # Per layer: q, k, v, o (768² + 768 each), MLP 768↔3072 with biases, two LayerNorms.
    layer = 4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    assert {u.params for u in clip[:-1]} == {layer} and len(clip) == 13
    assert clip[-1].params == 49_408 * 768 + 77 * 768 + 2 * 768


def test_flux_transformer_units(flux):
    units = residency_units(flux)["transformer"]
    names = [u.name for u in units]
    assert names == ([f"transformer_blocks.{i}" for i in range(19)]
                     + [f"single_transformer_blocks.{i}" for i in range(38)] + [REST])
    # models.md §3: double block 339,831,296, single block 141,591,808, rest 64,124,992.
    assert {u.params for u in units[:19]} == {339_831_296}
    assert {u.params for u in units[19:57]} == {141_591_808}
    assert units[-1].params == 64_124_992


@pytest.mark.parametrize("name", ["wan2.2-t2v-a14b", "wan2.2-ti2v-5b", "flux.1-dev"])
def test_units_partition_every_component(name):
    pipe = build_pipeline(name)
    for component, units in residency_units(pipe).items():
        module = getattr(pipe, component)
        assert sum(u.params for u in units) == sum(p.numel() for p in module.parameters())
        distinct = {id(t): t for t in [*module.parameters(), *module.buffers()]}
        assert sum(u.weight_bytes for u in units) == sum(
            t.numel() * t.element_size() for t in distinct.values())
        assert units[-1].name == REST and all(u.block_index >= 0 for u in units[:-1])
        block_modules = {id(m) for u in units[:-1] for m in u.modules[0].modules()}
        assert not block_modules & {id(m) for m in units[-1].modules}
        for u in units:
            assert all(getattr(mod, attr) is not None for mod, attr in u.slots)


def test_vae_units_are_its_blocks(wan):
    vae = [u.name for u in residency_units(wan)["vae"]]
    # Wan2.1 VAE encoder: 2 residual blocks per level (4 levels) + 3 downsamplers, flat.
    assert vae == ([f"encoder.down_blocks.{i}" for i in range(4 * 2 + 3)]
                   + ["encoder.mid_block", "decoder.mid_block"]
                   + [f"decoder.up_blocks.{i}" for i in range(4)] + [REST])


def test_unknown_component_class():
    with torch.device("meta"):
        module = nn.Linear(2, 2)
    with pytest.raises(InputError, match="no residency units known for Linear"):
        component_units("x", module)
