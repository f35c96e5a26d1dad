"""Peer modes on the engine's tiny FLUX pipeline: each applies, runs with the pipeline's
own output, and leaves every weight as it was, in pageable CPU memory. The modes need
accelerate (diffusers' group offload imports it too), which the CI venv lacks: those tests
skip there; the device-map arithmetic is checked everywhere."""

from __future__ import annotations

import pytest
import torch

from resbench.peers import PEERS, LinkRates, RequestBytes, get_peer
from resbench.peers.accelerate_modes import _nbytes, device_map, resident_count
from tests.engines.helpers import tiny_flux_pipeline

CALL = {"prompt": "a red fox", "height": 16, "width": 16, "num_inference_steps": 1,
        "output_type": "pt", "return_dict": False}


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def test_device_map_keeps_the_first_blocks_and_covers_every_tensor(pipe):
    dit = pipe.transformer  # 2 double blocks, then 3 single blocks
    dmap = device_map(dit, 3, 0)
    assert dmap["transformer_blocks.0"] == dmap["transformer_blocks.1"] == 0
    assert dmap["single_transformer_blocks.0"] == 0
    assert dmap["single_transformer_blocks.1"] == dmap["single_transformer_blocks.2"] == "cpu"
    names = [n for n, _ in [*dit.named_parameters(), *dit.named_buffers()]]
    for name in names:
        owners = [k for k in dmap if name == k or name.startswith(k + ".")]
        assert len(owners) == 1, name
    assert {v for k, v in dmap.items() if "blocks" not in k} == {0}


def test_resident_count_fits_the_budget(pipe):
    dit = pipe.transformer
    blocks = [*dit.transformer_blocks, *dit.single_transformer_blocks]
    rest = _nbytes(dit) - sum(_nbytes(b) for b in blocks)
    two = rest + _nbytes(blocks[0]) + _nbytes(blocks[1])
    assert resident_count(dit, two) == 2
    assert resident_count(dit, two - 1) == 1
    assert resident_count(dit, rest - 1) == 0
    assert resident_count(dit, 10**12) == len(blocks)


def test_predictions_order_the_modes_as_their_copies_do():
    link = LinkRates(h2d_pinned_bytes_per_s=50e9, h2d_pageable_bytes_per_s=5e9,
                     d2h_pinned_bytes_per_s=50e9, d2h_pageable_bytes_per_s=10e9,
                     pin_s_per_byte=0.5e-9)
    load = RequestBytes(dit_bytes=10 * 10**9, dit_forwards=4, other_bytes=2 * 10**9)
    # stream: 42 GB at 50 GB/s; no stream: 42 GB in at 5 GB/s and back at 10 GB/s
    assert get_peer("group-block-stream").predict_transfer_s(load, link) == pytest.approx(0.84)
    assert get_peer("group-block").predict_transfer_s(load, link) == pytest.approx(8.4 + 4.2)
    assert get_peer("sequential-offload").predict_transfer_s(load, link) == pytest.approx(8.4)
    # model offload moves each component once each way
    assert get_peer("model-offload").predict_transfer_s(load, link) == pytest.approx(2.4 + 1.2)


def test_unknown_peer_names_the_known_ones():
    from resbench.errors import InputError

    with pytest.raises(InputError, match="model-offload"):
        get_peer("nope")


@pytest.mark.parametrize("name", ["model-offload", "group-block", "group-leaf",
                                  "accelerate-dispatch"])
def test_mode_runs_and_gives_the_weights_back(pipe, name):
    pytest.importorskip("accelerate")
    peer = PEERS[name]
    assert peer.available(torch.device("cpu")) is None
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    params = {k: id(p) for k, p in pipe.transformer.named_parameters()}
    reference = pipe(**CALL, generator=torch.Generator().manual_seed(0))[0]
    peer.apply(pipe, torch.device("cpu"), 10**9)
    try:
        out = pipe(**CALL, generator=torch.Generator().manual_seed(0))[0]
    finally:
        peer.remove(pipe)
    torch.testing.assert_close(out, reference)
    after = pipe.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: id(p) for k, p in pipe.transformer.named_parameters()} == params
    assert all(p.device.type == "cpu" and not p.is_pinned() for p in pipe.transformer.parameters())
    assert not any(hasattr(m, "_hf_hook") for m in pipe.transformer.modules())


def test_streaming_modes_cannot_run_on_the_cpu():
    # without accelerate: that is missing; with it: use_stream needs a CUDA device
    assert PEERS["group-block-stream"].available(torch.device("cpu")) is not None
    assert PEERS["group-leaf-stream-lowmem"].available(torch.device("cpu")) is not None


def test_a_snapshot_gives_back_the_same_parameter_objects_and_tensors(pipe):
    from resbench.peers import WeightSnapshot

    layer = pipe.transformer.proj_out
    weight, data = layer.weight, layer.weight.data
    snap = WeightSnapshot(pipe)
    layer.weight.data = torch.zeros_like(data)  # what a mode does: rebind the data...
    layer._parameters["weight"] = torch.nn.Parameter(torch.ones_like(data))  # ...or the object
    snap.restore()
    assert layer.weight is weight and layer.weight.data.data_ptr() == data.data_ptr()


def test_remove_with_a_snapshot_rebinds_without_copying(pipe):
    pytest.importorskip("accelerate")
    from resbench.peers import WeightSnapshot

    ptrs = {k: p.data_ptr() for k, p in pipe.transformer.named_parameters()}
    peer = PEERS["accelerate-dispatch"]
    snap = WeightSnapshot(pipe)
    peer.apply(pipe, torch.device("cpu"), 10**9)
    pipe(**CALL, generator=torch.Generator().manual_seed(0))
    peer.remove(pipe, snap)
    assert {k: p.data_ptr() for k, p in pipe.transformer.named_parameters()} == ptrs
