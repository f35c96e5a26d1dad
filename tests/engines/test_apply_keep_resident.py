"""`apply_plan` with layerwise `keep_resident` on the CPU device: the transformer's resident
blocks stay on the device between pipeline calls (the next call copies them no more), the
outputs stay bitwise equal to the unmanaged pipeline's, the kept blocks meet the next call's
text encoders (a budget the first call fits is too small for the second), and `remove()`
gives the pipeline back as it was."""

from __future__ import annotations

import pytest
import torch

import resbench
from resbench.errors import DoesNotFitError
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan
from tests.engines.helpers import FLUX_TINY, tiny_flux_pipeline
from tests.engines.test_apply import assert_restored, generate, snapshot, states

CALL = {"prompt": "a red fox", "height": 32, "width": 32, "num_inference_steps": 1,
        "guidance_scale": 3.5}
# as in FLUX.1-dev, the T5 encoder outweighs the DiT blocks that stream at once
BIG_T5 = {**FLUX_TINY, "text_encoder_2": {**FLUX_TINY["text_encoder_2"], "d_ff": 2048}}


def plan(keep: bool) -> Plan:
    return Plan(name="keep" if keep else "cold", components=(
        ("text_encoder", OffloadConfig()), ("text_encoder_2", OffloadConfig()),
        ("transformer", LayerwiseConfig(resident_blocks=2, prefetch_depth=1, keep_resident=keep)),
        ("vae", OffloadConfig())))


def test_kept_blocks_stay_between_calls_and_outputs_do_not_change() -> None:
    pipe = tiny_flux_pipeline(BIG_T5)
    reference = generate(pipe, CALL)
    before, state = snapshot(pipe), states(pipe)

    handle = resbench.apply_plan(pipe, plan(keep=True), device="cpu")
    assert torch.equal(generate(pipe, CALL), reference)
    session = handle.session
    assert session is not None
    manager, device = session.manager, session.placement.device
    kept = manager.strategies["transformer"].resident_units
    assert len(kept) == 2
    assert all(device.on_device(("transformer", u.name)) for u in kept)  # after the call
    first_h2d = manager.h2d_bytes
    first_peak = device.peak_bytes()
    assert torch.equal(generate(pipe, CALL), reference)
    # the second call copies in all but the kept blocks
    kept_bytes = sum(u.weight_bytes for u in kept)
    assert manager.request_h2d_bytes == first_h2d - kept_bytes
    assert device.peak_bytes() > first_peak  # the kept blocks beside the next call's T5
    assert manager.leftover_units() == []
    handle.remove()
    assert_restored(pipe, before, state)
    assert torch.equal(generate(pipe, CALL), reference)

    # the budget the first call needed: enough for one request, not for the steady state
    handle = resbench.apply_plan(pipe, plan(keep=True), device="cpu", budget_bytes=first_peak)
    assert torch.equal(generate(pipe, CALL), reference)
    with pytest.raises(DoesNotFitError):
        generate(pipe, CALL)
    assert handle.removed  # a failed call gives the pipeline back
    assert_restored(pipe, before, state)
