"""Peer modes: the offload modes diffusers and accelerate ship, applied to the engine's
diffusers pipeline so that they run, and are traced, next to resbench plans.

`PEERS` maps a mode's name to its object (`PeerMode`: `apply`, `remove`, `available`,
`predict_transfer_s`); `resbench.peers.profile` turns a `torch.profiler` run of any of them
into resbench trace events.
"""

from __future__ import annotations

from resbench.peers.accelerate_modes import DispatchBlocks
from resbench.peers.base import (
    LinkRates,
    PeerMode,
    RequestBytes,
    WeightSnapshot,
    remove_hooks,
    to_pageable_cpu,
)
from resbench.peers.diffusers_modes import (
    GroupOffload,
    GroupOffloadConfig,
    ModelOffload,
    SequentialOffload,
)

__all__ = ["PEERS", "LinkRates", "PeerMode", "RequestBytes", "WeightSnapshot", "get_peer",
           "remove_hooks", "to_pageable_cpu"]


def _group(name: str, offload_type: str, use_stream: bool, low: bool = False) -> GroupOffload:
    return GroupOffload(name, GroupOffloadConfig(offload_type=offload_type,  # type: ignore[arg-type]
                                                 use_stream=use_stream, low_cpu_mem_usage=low))


PEERS: dict[str, PeerMode] = {p.name: p for p in (
    ModelOffload(),
    _group("group-block-stream", "block_level", True),
    _group("group-leaf-stream", "leaf_level", True),
    DispatchBlocks(),
    _group("group-block-stream-lowmem", "block_level", True, low=True),
    _group("group-leaf-stream-lowmem", "leaf_level", True, low=True),
    _group("group-block", "block_level", False),
    _group("group-leaf", "leaf_level", False),
    SequentialOffload(),
)}
"""Every peer mode, in the order a benchmark should try them (cheapest first)."""


def get_peer(name: str) -> PeerMode:
    from resbench.errors import InputError

    if name not in PEERS:
        raise InputError(f"unknown peer mode {name!r}; peer modes: {', '.join(PEERS)}")
    return PEERS[name]
