"""`apply_plan` on a user's own diffusers pipeline (tokenizers, real weights) on the CPU device:
outputs bitwise equal to the unmanaged pipeline's, and `remove()` gives the pipeline back as
it was (modules, `Parameter` objects, devices, dtypes, values, no hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import resbench
from resbench.engines.build import build_pipeline
from resbench.engines.units import residency_units
from resbench.errors import DoesNotFitError, InputError
from resbench.pipeline import Request
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan, ResidentConfig
from tests.engines.helpers import FLUX_TINY, WAN_TINY, tiny_flux_pipeline, word_tokenizer

WAN, FLUX = "wan2.2-t2v-a14b", "flux.1-dev"
# 3 steps of the shipped UniPC cross the expert boundary (see test_diffusers_engine.py).
WAN_CALL = {"prompt": "a red fox in the snow", "negative_prompt": "a photo", "height": 32,
            "width": 32, "num_frames": 5, "num_inference_steps": 3, "guidance_scale": 4.0}
FLUX_CALL = {"prompt": ["a cat on a mat", "a red fox"], "height": 32, "width": 32,
             "num_inference_steps": 2, "guidance_scale": 3.5}
TUNED = """\
schema = 1
name = "tuned-for-test"
policy = "dynamic"
buffer_margin = 1024

[components.text_encoder]
strategy = "offload"
release = "d2h"

[components.transformer]
strategy = "layerwise"
group_size = 2
prefetch_depth = 1
resident_blocks = 1

[components.transformer_2]
strategy = "layerwise"
prefetch_depth = 2

[components.vae]
strategy = "resident"
"""


def wan(dtype: torch.dtype | None = torch.float32) -> Any:
    pipe = build_pipeline(WAN, overrides=WAN_TINY, device="cpu", dtype=dtype)
    pipe.register_modules(tokenizer=word_tokenizer())
    return pipe


def flux() -> Any:
    return tiny_flux_pipeline()


def generate(pipe: Any, call: dict[str, Any], **changes: Any) -> torch.Tensor:
    kwargs = {**call, "output_type": "pt", "generator": torch.Generator().manual_seed(0),
              **changes}
    return pipe(**kwargs, return_dict=False)[0]


def modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def snapshot(pipe: Any) -> dict[str, Any]:
    """Everything `remove()` must give back."""
    comps = modules(pipe)
    return {
        "class": type(pipe),
        "modules": {n: [id(m) for m in c.modules()] for n, c in comps.items()},
        "params": {n: [(k, id(p), p.device, p.dtype, p.requires_grad)
                       for k, p in c.named_parameters()] for n, c in comps.items()},
        "buffers": {n: [(k, id(b), b.device, b.dtype) for k, b in c.named_buffers()]
                    for n, c in comps.items()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks))
                  for c in comps.values() for m in c.modules()],
        "attributes": {n: sorted(k for k in ("forward", "encode", "decode") if k in c.__dict__)
                       for n, c in comps.items()},
        "scheduler": sorted(pipe.scheduler.__dict__),
    }


def states(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v.clone() for k, v in c.state_dict().items()} for n, c in modules(pipe).items()}


def assert_restored(pipe: Any, before: dict[str, Any], state: dict[str, dict[str, torch.Tensor]]):
    assert snapshot(pipe) == before
    assert all(h == (0, 0) for h in before["hooks"])
    now = states(pipe)
    for name, tensors in state.items():
        assert now[name].keys() == tensors.keys()
        for key, value in tensors.items():
            assert torch.equal(now[name][key], value), (name, key)


def test_two_lines_run_a_tuned_plan_and_remove_gives_the_pipeline_back(tmp_path: Path) -> None:
    pipe = wan()
    reference = generate(pipe, WAN_CALL)
    before, state = snapshot(pipe), states(pipe)
    plan = tmp_path / "tuned.toml"
    plan.write_text(TUNED)

    handle = resbench.apply_plan(pipe, plan, device="cpu")
    assert torch.equal(generate(pipe, WAN_CALL), reference)
    # the schedule was read from that call; the next call reuses it and the set-up weights
    assert handle.schedule is not None and handle.schedule.request["steps"] == 3
    assert torch.equal(generate(pipe, WAN_CALL, prompt="a red fox in the snow"), reference)
    assert not torch.equal(generate(pipe, WAN_CALL, prompt="a cat on a mat"), reference)
    # while applied, the offloaded text encoder's weights are in the device's host copies
    assert all(p.numel() == 0 for p in pipe.text_encoder.parameters())

    handle.remove()
    assert_restored(pipe, before, state)
    assert torch.equal(generate(pipe, WAN_CALL), reference)
    handle.remove()  # a second remove does nothing
    assert "removed" in repr(handle)


def test_repr_shows_each_components_strategy(tmp_path: Path) -> None:
    pipe = wan()
    cls = type(pipe)
    plan = tmp_path / "tuned.toml"
    plan.write_text(TUNED)
    with resbench.apply_plan(pipe, plan, device="cpu") as handle:
        assert type(pipe) is not cls and isinstance(pipe, cls)
        text = repr(handle)
    assert "WanPipeline as wan2.2-t2v-a14b, plan 'tuned-for-test' (policy dynamic)" in text
    lines = text.splitlines()[1:]
    assert [line.split()[:2] for line in lines] == [
        ["text_encoder", "offload(prefetch=True,"], ["transformer", "layerwise(group_size=2,"],
        ["transformer_2", "layerwise(group_size=1,"], ["vae", "resident"]]
    assert "resident_blocks=1" in lines[1] and "release=d2h" in lines[0]
    assert type(pipe) is cls  # removed by the `with`


@pytest.mark.parametrize("config", [OffloadConfig(prefetch=False, release="d2h"),
                                    LayerwiseConfig(group_size=2, prefetch_depth=2,
                                                    resident_blocks=1)],
                         ids=["offload-d2h", "layerwise"])
def test_flux_with_both_tokenizers(config) -> None:
    pipe = flux()
    reference = generate(pipe, FLUX_CALL)
    before, state = snapshot(pipe), states(pipe)
    handle = resbench.apply_plan(pipe, Plan(components=(("default", config),)), device="cpu")
    assert torch.equal(generate(pipe, FLUX_CALL), reference)
    assert handle.schedule is not None and handle.schedule.request["batch"] == 2
    handle.remove()
    assert_restored(pipe, before, state)
    assert torch.equal(generate(pipe, FLUX_CALL), reference)


def test_a_given_request_is_recorded_and_set_up_at_once() -> None:
    pipe = wan()
    reference = generate(pipe, WAN_CALL)
    request = Request(height=32, width=32, frames=5, steps=3, guidance=4.0)
    plan = Plan(components=(("default", OffloadConfig()), ("vae", ResidentConfig())))
    handle = resbench.apply_plan(pipe, plan, device="cpu", request=request)
    assert handle.schedule is not None  # before any call
    assert all(p.numel() == 0 for p in pipe.transformer.parameters())
    assert all(p.numel() > 0 for p in pipe.vae.parameters())  # resident: placed at setup
    with pytest.raises(InputError, match="this call is 32x32x5, 2 steps.*recorded for "
                                         "32x32x5, 3 steps"):
        generate(pipe, WAN_CALL, num_inference_steps=2)
    assert torch.equal(generate(pipe, WAN_CALL), reference)  # still applied, still right
    handle.remove()
    assert torch.equal(generate(pipe, WAN_CALL), reference)


def test_a_call_of_another_shape_is_refused_before_it_runs() -> None:
    pipe = wan()
    reference = generate(pipe, WAN_CALL)
    before = snapshot(pipe)
    handle = resbench.apply_plan(pipe, Plan(components=(("default", LayerwiseConfig()),)),
                                 device="cpu")
    assert torch.equal(generate(pipe, WAN_CALL), reference)
    for change in ({"height": 64}, {"guidance_scale": 1.0}, {"output_type": "latent"},
                   {"max_sequence_length": 256}, {"num_videos_per_prompt": 2}):
        with pytest.raises(InputError, match="remove\\(\\) and apply_plan again"):
            generate(pipe, WAN_CALL, **change)
    # the guidance value itself does not change the schedule (only CFG on or off does)
    generate(pipe, WAN_CALL, guidance_scale=6.0)
    handle.remove()
    assert snapshot(pipe) == before


def test_the_schedule_describes_the_pipelines_own_units_and_dtypes() -> None:
    # Built in the deployment dtypes: bf16, with the fp32 modules diffusers keeps fp32.
    pipe = wan(dtype=None)
    request = Request(height=32, width=32, frames=5, steps=2, guidance=4.0)
    handle = resbench.apply_plan(pipe, Plan(), device="cpu", request=request)
    real = [u.info() for units in residency_units(pipe).values() for u in units]
    assert handle.schedule is not None
    assert sorted(handle.schedule.units, key=str) == sorted(real, key=str)
    handle.remove()


def test_a_failure_gives_the_pipeline_back() -> None:
    pipe = wan()
    reference = generate(pipe, WAN_CALL)
    before, state = snapshot(pipe), states(pipe)
    handle = resbench.apply_plan(pipe, Plan(components=(("default", ResidentConfig()),)),
                                 device="cpu", budget_bytes=10_000)
    with pytest.raises(DoesNotFitError, match="missing"):
        generate(pipe, WAN_CALL)
    assert handle.removed
    assert_restored(pipe, before, state)
    assert torch.equal(generate(pipe, WAN_CALL), reference)


def test_what_apply_plan_refuses(tmp_path: Path) -> None:
    pipe = wan()
    handle = resbench.apply_plan(pipe, "all-resident", device="cpu")
    with pytest.raises(InputError, match="already under a plan"):
        resbench.apply_plan(pipe, "all-resident", device="cpu")
    with pytest.raises(InputError, match="cannot follow a call with prompt_embeds"):
        pipe(prompt_embeds=torch.zeros(1, 512, 32), num_frames=5, height=32, width=32)
    handle.remove()
    with pytest.raises(InputError, match="no component 'transformer_3'"):
        resbench.apply_plan(pipe, Plan(components=(("transformer_3", ResidentConfig()),)),
                            device="cpu")
    pipe.register_modules(transformer=None)
    with pytest.raises(InputError, match="does not know a WanPipeline with components "
                                         "text_encoder, transformer_2, vae; it knows"):
        resbench.apply_plan(pipe, "all-resident", device="cpu")


def test_the_readme_lines_apply_a_shipped_tuned_plan() -> None:
    pipe = wan()
    reference = generate(pipe, WAN_CALL)
    plan = Path(__file__).parents[2] / "strategies/wan2.2-t2v-a14b/h100-80g-calibrated-48GB.tuned.toml"
    handle = resbench.apply_plan(pipe, plan, device="cpu")
    assert torch.equal(generate(pipe, WAN_CALL), reference)
    assert "plan 'wan2.2-t2v-a14b/h100-80g-calibrated/48GB/tuned' (policy dynamic)" in repr(handle)
    handle.remove()


def test_every_request_fits_the_budget_the_first_one_fits() -> None:
    """Regression (H200, FLUX.1-dev 1024² at 16 GB): a plan whose one request fits ran out
    of memory in the second. The transformer's resident blocks, loaded at its first use,
    stayed on the device after the request, so the next request's text encoders met them;
    the simulator, which scores one request, never saw that. Each request now starts from
    the device as setup left it, so each repeats the first's memory and decisions."""
    plan = Plan(name="resident-blocks", components=(
        ("text_encoder", OffloadConfig()), ("text_encoder_2", OffloadConfig()),
        ("transformer", LayerwiseConfig(resident_blocks=2, prefetch_depth=1)),
        ("vae", OffloadConfig())))
    # as in FLUX.1-dev, the T5 encoder outweighs the DiT blocks that stream at once
    big_t5 = {**FLUX_TINY, "text_encoder_2": {**FLUX_TINY["text_encoder_2"], "d_ff": 2048}}
    pipe = tiny_flux_pipeline(big_t5)
    reference = generate(pipe, FLUX_CALL)
    handle = resbench.apply_plan(pipe, plan, device="cpu")
    assert torch.equal(generate(pipe, FLUX_CALL), reference)
    device = handle.session.placement.device
    first_peak = device.peak_bytes()
    handle.remove()

    # the budget the first request needed, and not a byte more: the second must fit too
    handle = resbench.apply_plan(pipe, plan, device="cpu", budget_bytes=first_peak)
    for _ in range(3):
        assert torch.equal(generate(pipe, FLUX_CALL), reference)
    assert handle.session.placement.device.peak_bytes() == first_peak
    handle.remove()


def test_remove_keeping_the_host_buffers_gives_the_pipeline_back_without_a_copy(
        tmp_path: Path) -> None:
    """`remove(keep_host_buffers=True)`: the same pipeline as `remove()` gives (same objects,
    values), each CPU weight the device's host copy itself (the same memory), not a copy."""
    pipe = wan()
    generate(pipe, WAN_CALL, num_inference_steps=1)  # the scheduler's state after a call
    before, state = snapshot(pipe), states(pipe)
    plan = tmp_path / "tuned.toml"
    plan.write_text(TUNED)
    handle = resbench.apply_plan(pipe, plan, device="cpu")
    generate(pipe, WAN_CALL, num_inference_steps=1)
    assert handle.session is not None
    device = handle.session.placement.device
    hosts = {t.data_ptr() for key in handle.session.originals for t in device.host_tensors(key)}
    handle.remove(keep_host_buffers=True)
    assert_restored(pipe, before, state)
    assert {p.data_ptr() for c in modules(pipe).values() for p in c.parameters()} <= hosts
