"""diffusers' own offload modes, applied through the pipeline's public methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from resbench.peers.base import LinkRates, PeerMode, RequestBytes


def _weights(load: RequestBytes) -> float:
    return load.dit_bytes * load.dit_forwards + load.other_bytes


class ModelOffload(PeerMode):
    name = "model-offload"
    library = "accelerate"
    description = ("pipe.enable_model_cpu_offload(): accelerate cpu_offload_with_hook per "
                   "component, chained; a whole component moves (pageable .to()) when it runs "
                   "and the previous one is copied back")

    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        pipe.enable_model_cpu_offload(device=device)

    def predict_transfer_s(self, load: RequestBytes, link: LinkRates) -> float:
        once = load.dit_bytes + load.other_bytes
        return once / link.h2d_pageable_bytes_per_s + once / link.d2h_pageable_bytes_per_s


class SequentialOffload(PeerMode):
    name = "sequential-offload"
    library = "accelerate"
    description = ("pipe.enable_sequential_cpu_offload(): accelerate cpu_offload, every leaf "
                   "module's weights copied (pageable, blocking) before it runs, dropped after")

    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        pipe.enable_sequential_cpu_offload(device=device)

    def predict_transfer_s(self, load: RequestBytes, link: LinkRates) -> float:
        return _weights(load) / link.h2d_pageable_bytes_per_s


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupOffloadConfig:
    offload_type: Literal["block_level", "leaf_level"]
    use_stream: bool
    low_cpu_mem_usage: bool = False
    num_blocks_per_group: int = 1
    """block_level only (with use_stream diffusers forces 1)."""


class GroupOffload(PeerMode):
    """`pipe.enable_group_offload(...)` on every component, one config per registered name."""

    library = "diffusers"
    name: ClassVar[str] = "group-offload"
    description: ClassVar[str] = "pipe.enable_group_offload()"

    def __init__(self, name: str, config: GroupOffloadConfig) -> None:
        self.name = name  # type: ignore[misc]
        self.config = config
        self.pins_host = config.use_stream and not config.low_cpu_mem_usage  # type: ignore[misc]
        c = config
        self.description = (  # type: ignore[misc]
            f"pipe.enable_group_offload(offload_type={c.offload_type!r}"
            + (f", num_blocks_per_group={c.num_blocks_per_group}"
               if c.offload_type == "block_level" else "")
            + (", use_stream=True, record_stream=True, non_blocking=True" if c.use_stream else "")
            + (", low_cpu_mem_usage=True" if c.low_cpu_mem_usage else "") + ")")

    def available(self, device: torch.device) -> str | None:
        if self.config.use_stream and device.type != "cuda":
            return "use_stream needs a CUDA device"
        return super().available(device)

    def apply(self, pipe: Any, device: torch.device, budget_bytes: int | None) -> None:
        c = self.config
        pipe.enable_group_offload(
            onload_device=device, offload_device=torch.device("cpu"), offload_type=c.offload_type,
            num_blocks_per_group=c.num_blocks_per_group if c.offload_type == "block_level" else None,
            non_blocking=c.use_stream, use_stream=c.use_stream, record_stream=c.use_stream,
            low_cpu_mem_usage=c.low_cpu_mem_usage)

    def predict_transfer_s(self, load: RequestBytes, link: LinkRates) -> float:
        moved = _weights(load)
        if not self.config.use_stream:
            # pageable onload, and `module.to(cpu)` copies back at every offload
            return moved / link.h2d_pageable_bytes_per_s + moved / link.d2h_pageable_bytes_per_s
        pin = moved * link.pin_s_per_byte if self.config.low_cpu_mem_usage else 0.0
        return moved / link.h2d_pinned_bytes_per_s + pin
