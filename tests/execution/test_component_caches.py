"""After a run runs out of memory, components' own activation caches are cleared
(`execution.core.clear_component_caches`): the Wan VAE's feature cache held GBs into the
next run on the card."""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from resbench.execution.core import clear_component_caches


class CachingVae(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cache: list[int] = [1, 2]

    def clear_cache(self) -> None:
        self.cache = []


def test_every_component_with_a_cache_is_cleared_and_others_are_left_alone() -> None:
    vae, text = CachingVae(), nn.Linear(2, 2)
    clear_component_caches(SimpleNamespace(components={"vae": vae, "text_encoder": text}))  # type: ignore[arg-type]
    assert vae.cache == []
    clear_component_caches(None)  # a replay has no pipeline
