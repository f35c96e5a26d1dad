"""`TorchDriver`: runs the real pipeline and calls the manager from hooks on every block.

The manager works from the recorded schedule; the driver walks it in lockstep with the real
forward pass and checks that every block call is the one the schedule expects, so a model
whose call order differs from its recording fails loudly instead of streaming wrong units.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resbench.errors import ResbenchError
from resbench.models.base import REST, ResidencyComponent
from resbench.pipeline import Pipeline, PipelineHooks, Request
from resbench.residency.manager import ResidencyManager
from resbench.schedule import UnitCall


class ScheduleMismatch(ResbenchError):
    """The real run called units in a different order than the recorded schedule."""


class TorchDriver(PipelineHooks):
    def __init__(self, pipe: Pipeline, manager: ResidencyManager) -> None:
        self.pipe = pipe
        self.manager = manager
        self.calls = manager.schedule.calls
        self.cursor = 0
        self._open_rest: UnitCall | None = None
        self._handles: list[Any] = []
        for comp, module in pipe.components.items():
            if isinstance(module, ResidencyComponent):
                for path, blocks in module.block_lists():
                    for i, block in enumerate(blocks):
                        self._hook(block, comp, f"{path}.{i}")

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

    def run(self, request: Request) -> torch.Tensor:
        """Setup (resident loads), then the request; returns the pipeline output."""
        try:
            self.manager.setup()
            self.manager.request_start()
            out = self.pipe.run(request, hooks=self)
            self.manager.request_end()
            if self.cursor != len(self.calls):
                raise ScheduleMismatch(
                    f"run ended after {self.cursor} calls; the schedule has {len(self.calls)}")
        finally:
            for h in self._handles:
                h.remove()
        self.manager.tracer.finalize(self.manager.device.resolve)
        return out
