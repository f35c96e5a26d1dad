"""The diffusers engine on the GPU: `apply_plan` on CUDA against the pipeline moved to the card
unmanaged, and `profile --engine diffusers --device cuda` (run with `-m gpu` on a GPU)."""

from __future__ import annotations

import pytest
import torch

import resbench
from resbench.profile import run_profile
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan, ResidentConfig
from tests.engines.test_apply import TUNED, WAN_CALL, assert_restored, generate, snapshot, states
from tests.engines.test_apply import wan as tiny_wan

pytestmark = pytest.mark.gpu

PLANS = {
    "tuned": TUNED,
    "offload-all": Plan(components=(("default", OffloadConfig()),)),
    "stream-all-d2h": Plan(policy="dynamic", components=(
        ("default", LayerwiseConfig(group_size=2, prefetch_depth=2, resident_blocks=1)),
        ("text_encoder", OffloadConfig(release="d2h", prefetch=False)),
        ("vae", ResidentConfig()))),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_apply_plan_on_cuda_equals_the_pipeline_on_the_card(name: str, tmp_path) -> None:
    plan = PLANS[name]
    if isinstance(plan, str):
        path = tmp_path / "tuned.toml"
        path.write_text(plan)
        plan = path
    pipe = tiny_wan(dtype=None)  # the deployment dtypes: bf16, the VAE and kept modules fp32
    generate(pipe, WAN_CALL)  # the pipeline's own first-call state (scheduler, cache registry)
    before, state = snapshot(pipe), states(pipe)
    handle = resbench.apply_plan(pipe, plan, device="cuda")
    managed = [generate(pipe, WAN_CALL).cpu() for _ in range(2)]
    assert handle.session is not None
    device = handle.session.placement.device
    assert next(pipe.transformer.parameters()).is_cuda
    pinned = device.pinned_bytes()
    handle.remove()
    assert_restored(pipe, before, state)  # back on the CPU, same objects and values
    pipe.to("cuda")
    reference = generate(pipe, WAN_CALL).cpu()
    assert torch.equal(managed[0], reference) and torch.equal(managed[1], reference)
    assert pinned > 0  # the streamed units move from pinned host copies


def test_profile_runs_the_diffusers_pipeline_on_cuda() -> None:
    res = run_profile("wan2.2", device="cuda", engine="diffusers", scale=0.05, steps=2,
                      height=64, width=64, frames=5, budget_bytes=2 * 10**9)
    assert (res.engine, res.device) == ("diffusers", "cuda")
    assert res.latency_s > 0 and res.h2d_bytes > 0
    assert 0 < res.peak_device_bytes <= 2 * 10**9
    denoisers = {c.component for c in res.schedule.calls if c.stage == "denoise"}
    assert denoisers == {"transformer", "transformer_2"}
