"""`resbench export sglang`: flags worked out by hand from the sglang notes
(shared/reference/sglang-residency.md)."""

from __future__ import annotations

import pytest

from resbench.export.sglang import prefetch_size, sglang_flags
from resbench.models.registry import get_model
from resbench.residency.plan import Plan
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig, ResidentConfig
from resbench.resources import preset_names, resolve_plan

WAN = {c.name: c.kind for c in get_model("wan2.2-t2v-a14b").components}
FLUX = {c.name: c.kind for c in get_model("flux.1-dev").components}


def test_the_sglang_preset_is_exactly_sglangs_defaults():
    out = sglang_flags(resolve_plan("sglang-wan2.2"), WAN)
    assert out.flags == ("--text-encoder-cpu-offload true", "--dit-cpu-offload false",
                         "--dit-layerwise-offload true", "--dit-offload-prefetch-size 1",
                         "--vae-cpu-offload true", "--pin-cpu-memory true")
    assert out.unexpressed == ()


def test_all_resident_turns_every_auto_offload_off():
    out = sglang_flags(resolve_plan("all-resident"), FLUX)
    assert set(out.flags) == {"--text-encoder-cpu-offload false", "--dit-cpu-offload false",
                              "--dit-layerwise-offload false", "--vae-cpu-offload false",
                              "--pin-cpu-memory false"}  # the preset pins nothing
    assert out.unexpressed == ()


def test_prefetch_size_keeps_the_layers_in_flight():
    assert prefetch_size(LayerwiseConfig(group_size=2, prefetch_depth=3)) == 6
    assert prefetch_size(LayerwiseConfig(group_size=4, prefetch_depth=0)) == 4


def test_what_sglang_cannot_say_is_listed_line_by_line():
    plan = Plan(name="hand", policy="dynamic", buffer_margin_bytes=2**30,
                components=(
                    ("transformer", LayerwiseConfig(group_size=2, prefetch_depth=3,
                                                    resident_blocks=4, placement="spaced")),
                    ("transformer_2", ResidentConfig()),
                    ("text_encoder", LayerwiseConfig()),
                    ("vae", OffloadConfig(prefetch=False, release="drop"))))
    out = sglang_flags(plan, WAN)
    assert "--dit-offload-prefetch-size 6" in out.flags
    assert "--dit-layerwise-resident-layers 4" in out.flags
    assert "--text-encoder-cpu-offload true" in out.flags
    notes = "\n".join(out.unexpressed)
    # the second DiT wants resident, but the DiT flags are global: the first DiT's win
    assert "transformer_2: wants --dit-layerwise-offload false" in notes
    assert "'strided'" in notes  # spaced resident blocks
    assert "3 groups of 2 in flight" in notes
    assert "text_encoder: layerwise" in notes
    assert "vae: release=drop" in notes
    assert "policy=dynamic" in notes
    assert "no per-request lifetime" in notes  # resident blocks per request (the default)
    assert not any("residency-lifetime" in f for f in out.flags)
    assert len(out.unexpressed) == len(set(out.unexpressed))


def test_blocks_kept_between_requests_map_to_a_permanent_residency_lifetime():
    plan = Plan(name="keep", components=(
        ("transformer", LayerwiseConfig(resident_blocks=30, keep_resident=True)),))
    out = sglang_flags(plan, WAN)
    assert "--dit-layerwise-resident-layers 30" in out.flags
    assert "--dit-layerwise-residency-lifetime permanent" in out.flags
    assert any("keep_resident=true" in n for n in out.unexpressed)
    # the flag is global: a second DiT that drops its blocks per request is told so
    both = Plan(name="keep", components=(
        ("transformer", LayerwiseConfig(resident_blocks=30, keep_resident=True)),
        ("transformer_2", LayerwiseConfig(resident_blocks=30))))
    notes = "\n".join(sglang_flags(both, WAN).unexpressed)
    assert ("transformer_2: wants --dit-layerwise-residency-lifetime per-request, but the flag "
            "is global and transformer set it to permanent") in notes


def test_resident_layers_differing_between_dits_is_a_conflict():
    plan = Plan(name="two", components=(
        ("transformer", LayerwiseConfig()), ("transformer_2", LayerwiseConfig(resident_blocks=2))))
    out = sglang_flags(plan, WAN)
    assert not any(f.startswith("--dit-layerwise-resident-layers") for f in out.flags)
    assert any("wants --dit-layerwise-resident-layers 2" in n for n in out.unexpressed)


@pytest.mark.parametrize("preset", preset_names())
@pytest.mark.parametrize("kinds", [WAN, FLUX], ids=["wan", "flux"])
def test_every_preset_exports_one_value_per_flag(preset, kinds):
    out = sglang_flags(resolve_plan(preset), kinds)
    keys = [f.split(" ")[0] for f in out.flags]
    assert len(keys) == len(set(keys))
    assert all(f.startswith("--") and len(f.split(" ")) == 2 for f in out.flags)
    assert "--pin-cpu-memory true" in out.flags or "--pin-cpu-memory false" in out.flags
    assert "--dit-layerwise-offload true" in out.flags or "--dit-layerwise-offload false" in out.flags


def test_export_option_sets_are_deliberate():
    from resbench.cli import cli

    export = cli.commands["export"]
    assert {"trace", "sglang", "diffusers"} <= set(export.commands)
    assert {p.name for p in export.commands["sglang"].params} == {"plan_name", "model", "as_json"}
    assert {p.name for p in export.commands["diffusers"].params} == {
        "plan_name", "model", "device", "budget", "as_json"}
