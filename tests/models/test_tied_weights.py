"""Tied parameters stay tied when a meta-built module gets storage (`to_empty` unties them:
on the card T5's shared embedding took its bytes twice, 2.1 GB for Wan2.2's UMT5)."""

from __future__ import annotations

import torch
from torch import nn

from resbench.engines.build import build_pipeline
from resbench.models.base import materialize, retie, tied_parameters
from tests.engines.helpers import WAN_TINY


def tied() -> nn.Module:
    with torch.device("meta"):
        m = nn.Module()
        m.shared = nn.Embedding(10, 4)
        m.encoder = nn.Module()
        m.encoder.embed_tokens = nn.Embedding(10, 4)
        m.encoder.embed_tokens.weight = m.shared.weight
        m.head = nn.Linear(4, 3)
    return m


def test_retie_restores_the_first_holders_parameter_after_to_empty() -> None:
    m = tied()
    groups = tied_parameters(m)
    assert [[a for _, a in g] for g in groups] == [["weight", "weight"]]
    m.to_empty(device="cpu")
    assert m.shared.weight is not m.encoder.embed_tokens.weight
    retie(groups)
    assert m.shared.weight is m.encoder.embed_tokens.weight


def test_materialize_keeps_ties_and_counts_the_bytes_once() -> None:
    m = materialize(tied(), "cpu", seed=0, component="text_encoder")
    assert m.shared.weight is m.encoder.embed_tokens.weight
    assert sum(p.numel() for p in m.parameters()) == 10 * 4 + 4 * 3 + 3


def test_a_built_umt5_keeps_its_embedding_tied() -> None:
    te = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu", seed=0).text_encoder
    assert te.shared.weight is te.encoder.embed_tokens.weight
