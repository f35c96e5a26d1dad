"""`TorchDriver`: runs a real pipeline and calls the manager from hooks on every block.

The manager works from the recorded schedule; the driver walks it in lockstep with the real
forward pass and checks that every block call is the one the schedule expects, so a model
whose call order differs from its recording fails loudly instead of streaming wrong units.

The pipeline is any `ManagedPipeline` (the zoo's, or the diffusers engine's): the driver
hooks the blocks it lists and receives its `PipelineHooks` callbacks for component entries
and stages. Adapter merges are the manager's: the pipeline's `merge` callback is answered
"handled" (after checking the schedule merges that adapter there), and the manager's
strategy merges the pipeline's `LoraAdapter` into the device copies, or skips it. `run` is one request start to finish; a caller that runs the pipeline itself
brackets each of its requests with `request()` and calls `remove()` at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from resbench.adapters import LoraAdapter
from resbench.errors import ResbenchError
from resbench.models.base import REST
from resbench.pipeline import ManagedPipeline, PipelineHooks, Request
from resbench.residency.manager import ResidencyManager
from resbench.schedule import MergeCall, UnitCall


class ScheduleMismatch(ResbenchError):
    """The real run called units in a different order than the recorded schedule."""


class TorchDriver(PipelineHooks):
    """Block hooks on `pipe` (installed now, until `remove()`) feeding `manager`."""

    def __init__(self, pipe: ManagedPipeline, manager: ResidencyManager) -> None:
        self.pipe = pipe
        self.manager = manager
        self.calls = manager.schedule.calls
        self.cursor = 0
        self._current: UnitCall | None = None
        self._open_rest: UnitCall | None = None
        self._handles: list[Any] = []
        self.adapters = pipe.adapters()
        manager.apply_merge = self._apply_merge
        for comp in pipe.components:
            for unit, block in pipe.blocks(comp):
                self._hook(block, comp, unit)

    def _hook(self, block: nn.Module, comp: str, unit: str) -> None:
        self._handles.append(block.register_forward_pre_hook(
            lambda m, a: self._begin(comp, unit)))
        self._handles.append(block.register_forward_hook(
            lambda m, a, o: self._end(comp, unit)))

    def _expect(self, comp: str, unit: str) -> UnitCall:
        if self.cursor >= len(self.calls):
            raise ScheduleMismatch(f"{comp}.{unit} called after the schedule ended")
        call = self.calls[self.cursor]
        if call.component != comp or call.unit != unit:
            raise ScheduleMismatch(
                f"call {self.cursor}: ran {comp}.{unit}, schedule expected {call.component}.{call.unit}"
            )
        self.cursor += 1
        return call

    def _close_rest(self) -> None:
        if self._open_rest is not None:
            self.manager.unit_end(self._open_rest)
            self._open_rest = None

    def _begin(self, comp: str, unit: str) -> None:
        self._close_rest()
        self._current = self._expect(comp, unit)
        self.manager.unit_begin(self._current)

    def _end(self, comp: str, unit: str) -> None:
        assert self._current is not None
        self.manager.unit_end(self._current)

    # -- pipeline hooks -------------------------------------------------------------------------
    def stage_enter(self, stage: str) -> None:
        self.manager.stage_enter(stage)

    def stage_exit(self, stage: str) -> None:
        self.manager.stage_exit(stage)

    def component_enter(self, component: str) -> None:
        call = self._expect(component, REST)
        self.manager.unit_begin(call)
        self._open_rest = call

    def component_exit(self, component: str) -> None:
        self._close_rest()

    def merge(self, component: str, adapter: LoraAdapter) -> bool:
        upcoming = self.manager.index.merges_at.get(self.cursor, [])
        if not any(m.component == component and m.adapter == adapter.name for m in upcoming):
            raise ScheduleMismatch(f"call {self.cursor}: the pipeline merges {adapter.name} into "
                                   f"{component}; the schedule does not merge it there")
        return True

    def _apply_merge(self, merge: MergeCall) -> None:
        adapter = self.adapters[(merge.component, merge.adapter)]
        adapter.merge_into(self.pipe.components[merge.component])

    # -- requests ------------------------------------------------------------------------------
    @contextmanager
    def request(self) -> Iterator[None]:
        """One request: the unit calls made inside must be the whole schedule, in order.
        The manager's `setup()` must have run before the first request."""
        self.cursor = 0
        self._open_rest = None
        self.manager.request_start()
        yield
        self.manager.request_end()
        if self.cursor != len(self.calls):
            raise ScheduleMismatch(
                f"run ended after {self.cursor} calls; the schedule has {len(self.calls)}")

    def run(self, request: Request, *, requests: int = 1) -> torch.Tensor:
        """Setup (resident loads), then `requests` runs of the request back to back; returns
        the last one's output. The hooks are removed afterwards."""
        try:
            self.manager.setup()
            for _ in range(requests):
                with self.request():
                    out = self.pipe.run(request, hooks=self)
        finally:
            self.remove()
        self.manager.tracer.finalize(self.manager.device.resolve)
        return out

    def remove(self) -> None:
        """Remove every block hook (the pipeline's modules are left as they were)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
