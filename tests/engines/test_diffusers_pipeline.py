from __future__ import annotations

import dataclasses

import torch

from resbench.engines.build import build_pipeline
from resbench.engines.pipeline import DiffusersPipeline
from resbench.models.base import REST
from resbench.pipeline import PipelineHooks, Request, unit_slots_of
from tests.engines.helpers import WAN_TINY

REQUEST = Request(height=32, width=32, frames=5, steps=4, guidance=4.0)


class Spy(PipelineHooks):
    """Follows a run the way a driver does: pipeline callbacks + its own block hooks."""

    def __init__(self, pipe: DiffusersPipeline) -> None:
        self.calls: list[tuple[str, str, str, int]] = []
        self.events: list[str] = []
        self.stage, self.step_index = "", -1
        self.handles = [
            block.register_forward_pre_hook(lambda m, a, c=c, u=u: self.call(c, u))
            for c in pipe.components for u, block in pipe.blocks(c)]

    def call(self, component: str, unit: str) -> None:
        self.calls.append((component, unit, self.stage, self.step_index))

    def stage_enter(self, stage: str) -> None:
        self.stage, self.step_index = stage, -1
        self.events.append(f"enter {stage}")

    def stage_exit(self, stage: str) -> None:
        self.events.append(f"exit {stage}")

    def step(self, step: int) -> None:
        self.step_index = step

    def component_enter(self, component: str) -> None:
        self.call(component, REST)


def test_pipeline_gives_what_a_model_spec_gives():
    pipe = DiffusersPipeline.build("wan2.2-t2v-a14b")
    assert pipe.kinds == {"text_encoder": "text_encoder", "transformer": "dit",
                            "transformer_2": "dit", "vae": "vae"}
    assert pipe.text_encoders == ("text_encoder",)
    assert pipe.dits == ("transformer", "transformer_2")
    assert pipe.vae == "vae"
    assert [(u.stage, u.component, u.phase) for u in pipe.uses()] == [
        ("text_encode", "text_encoder", 0), ("denoise", "transformer", 0),
        ("denoise", "transformer_2", 1), ("decode", "vae", 0)]
    request = pipe.default_request()
    assert (request.height, request.width, request.frames, request.steps) == (720, 1280, 81, 40)
    assert len(pipe.blocks("transformer")) == 40


def test_unit_slots_cover_every_tensor_once():
    pipe = DiffusersPipeline.build("flux.1-dev")
    for name, module in pipe.components.items():
        slots = pipe.unit_slots(name)
        assert list(slots)[-1] == REST
        tensors = [getattr(mod, attr) for unit in slots.values() for mod, attr in unit]
        assert len({id(t) for t in tensors}) == len(tensors)
        assert {id(t) for t in tensors} == {id(t) for t in [*module.parameters(), *module.buffers()]}


def test_materialize_in_place_matches_a_materialized_build():
    pipe = DiffusersPipeline.build("wan2.2-t2v-a14b", overrides=WAN_TINY).materialize("cpu", seed=2)
    reference = build_pipeline("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu", seed=2)
    for name, module in pipe.components.items():
        assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
        ref = getattr(reference, name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in module.state_dict().items()), name


def test_a_run_follows_the_recorded_schedule_call_for_call():
    # What a driver needs: the real run (CPU weights) calls the units in the order, stages
    # and steps of the schedule recorded on meta.
    schedule = DiffusersPipeline.build("wan2.2-t2v-a14b", overrides=WAN_TINY).record(REQUEST)
    pipe = DiffusersPipeline.build("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu")
    spy = Spy(pipe)
    out = pipe.run(REQUEST, hooks=spy)
    for h in spy.handles:
        h.remove()
    assert spy.calls == [(c.component, c.unit, c.stage, c.step) for c in schedule.calls]
    assert spy.events == ["enter text_encode", "exit text_encode", "enter denoise",
                          "exit denoise", "enter decode", "exit decode"]
    assert torch.isfinite(out).all()


def test_a_run_is_seeded_by_its_request():
    pipe = DiffusersPipeline.build("wan2.2-t2v-a14b", overrides=WAN_TINY, device="cpu")
    request = dataclasses.replace(REQUEST, steps=2)
    torch.manual_seed(1)
    first = pipe.run(request)
    torch.manual_seed(2)  # the global generator plays no part
    assert torch.equal(pipe.run(request), first)
    assert not torch.equal(pipe.run(dataclasses.replace(request, seed=1)), first)


def test_a_pipeline_is_what_the_driver_and_the_devices_need():
    pipe = DiffusersPipeline.build("wan2.2-t2v-a14b", overrides=WAN_TINY, dtype=torch.float32)
    slots = unit_slots_of(pipe)
    assert list(slots) == ["text_encoder", "transformer", "transformer_2", "vae"]
    blocks = pipe.blocks("transformer")
    assert [u for u, _ in blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert blocks[1][1] is pipe.pipe.transformer.blocks[1]
    assert list(slots["transformer"]) == ["blocks.0", "blocks.1", "blocks.2", REST]
    # dtype=float32 (the CPU device) casts every tensor, the fp32-kept ones included
    assert {t.dtype for m in pipe.components.values()
            for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()} == {torch.float32}
