"""`resbench export diffusers`: the printed Python runs on a tiny pipeline and gives the
pipeline's own output; diffusers' call is printed only for the plan it says exactly."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from resbench.cli import cli
from resbench.export.diffusers_snippet import closest_diffusers_mode, diffusers_snippet
from resbench.models.registry import get_model
from resbench.residency.plan import Plan
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig, ResidentConfig
from resbench.resources import preset_names, resolve_plan
from tests.engines.helpers import tiny_flux_pipeline

FLUX = {c.name: c.kind for c in get_model("flux.1-dev").components}
CALL = {"prompt": "a red fox", "height": 16, "width": 16, "num_inference_steps": 1,
        "output_type": "pt", "return_dict": False}


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def test_the_printed_snippet_runs_the_plan_on_a_pipeline(tmp_path, pipe):
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(Plan(name="hand", components=(
        ("transformer", LayerwiseConfig(group_size=2, resident_blocks=1)),
        ("text_encoder", OffloadConfig(release="d2h")))).to_toml())
    result = CliRunner().invoke(cli, ["export", "diffusers", str(plan_file), "-m", "flux",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "resbench.apply_plan(pipe" in result.output
    reference = pipe(**CALL, generator=torch.Generator().manual_seed(0))[0]
    scope = {"pipe": pipe}
    exec(result.output, scope)  # noqa: S102 - the snippet is what the test is about
    handle = scope["handle"]
    assert handle.plan.name == "hand"
    out = pipe(**CALL, generator=torch.Generator().manual_seed(0))[0]
    assert handle.session is not None  # the call ran under the plan
    handle.remove()
    torch.testing.assert_close(out, reference)


def test_all_resident_is_diffusers_own_call_and_runs(pipe):
    code = diffusers_snippet(resolve_plan("all-resident"), FLUX, plan_ref="all-resident",
                             device="cpu")
    assert "apply_plan" not in code and "pipe.to('cpu')" in code
    exec(code, {"pipe": pipe})  # noqa: S102
    assert all(p.device.type == "cpu" for p in pipe.transformer.parameters())


def test_closest_diffusers_mode_is_named_only_for_plans_of_its_shape():
    offload = Plan(name="o", components=(("default", OffloadConfig()),))
    group = Plan(name="g", components=(("default", LayerwiseConfig()),))
    partial = Plan(name="p", components=(("default", LayerwiseConfig(resident_blocks=3)),))
    mixed = Plan(name="m", components=(("dit", LayerwiseConfig()), ("vae", ResidentConfig())))
    assert "enable_model_cpu_offload" in closest_diffusers_mode(offload, FLUX)
    assert "enable_group_offload" in closest_diffusers_mode(group, FLUX)
    assert closest_diffusers_mode(partial, FLUX) is None
    assert closest_diffusers_mode(mixed, FLUX) is None


def test_every_preset_exports_python_that_compiles():
    for name in preset_names():
        code = diffusers_snippet(resolve_plan(name), FLUX, plan_ref=name, budget_bytes=10**9)
        compile(code, name, "exec")
        assert ("apply_plan" in code) != ("pipe.to(" in code)
