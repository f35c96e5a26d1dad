from __future__ import annotations

from pathlib import Path

import pytest

from resbench.errors import InputError
from resbench.residency import (
    LayerwiseConfig,
    OffloadConfig,
    Plan,
    ResidentConfig,
    load_plan,
    plan_from_dict,
)

PRESETS = sorted(Path("strategies/presets").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    plan = load_plan(path)
    out = tmp_path / "plan.toml"
    plan.save(out)
    assert load_plan(out) == plan


def test_presets_exist() -> None:
    names = {p.stem for p in PRESETS}
    assert {"all-resident", "sglang-wan2.2", "diffusers-model-offload",
            "diffusers-sequential-offload", "diffusers-group-offload", "kijai-block-swap"} <= names


def test_resolution_prefers_name_then_kind_then_default() -> None:
    plan = Plan(components=(("default", OffloadConfig()), ("dit", LayerwiseConfig()),
                            ("transformer_2", ResidentConfig())))
    assert plan.config_for("transformer", "dit") == LayerwiseConfig()
    assert plan.config_for("transformer_2", "dit") == ResidentConfig()
    assert plan.config_for("vae", "vae") == OffloadConfig()
    assert Plan().config_for("vae", "vae") == ResidentConfig()


def test_sizes_in_toml() -> None:
    plan = plan_from_dict({"buffer_margin": "2GiB", "host": {"pinned_budget": "64GB"}})
    assert plan.buffer_margin_bytes == 2 * 2**30
    assert plan.host.pinned_budget_bytes == 64 * 10**9


@pytest.mark.parametrize("doc, message", [
    ({"polcy": "static"}, "polcy: unknown key; valid keys: buffer_margin, components"),
    ({"policy": "greedy"}, "policy: 'greedy' is not a policy; valid: static, dynamic, disabled"),
    ({"schema": 9}, "schema 9 found; this resbench reads schema 1"),
    ({"components": {"transformer": {"strategy": "stream"}}},
     "components.transformer.strategy: 'stream' is not a strategy; valid: resident, offload, layerwise, disabled"),
    ({"components": {"transformer": {"strategy": "layerwise", "prefetch_dpeth": 2}}},
     "components.transformer.prefetch_dpeth: unknown key for strategy 'layerwise'; valid keys: group_size, keep_resident, placement, prefetch_depth, resident_blocks, strategy"),
    ({"components": {"transformer": {"strategy": "layerwise", "prefetch_depth": -1}}},
     "components.transformer.prefetch_depth: must be ≥ 0, got -1"),
    ({"components": {"transformer": {"strategy": "layerwise", "group_size": 1.5}}},
     "components.transformer.group_size: must be an integer, got 1.5"),
    ({"components": {"transformer": {"strategy": "layerwise", "group_size": 0}}},
     "components.transformer.group_size: must be ≥ 1, got 0"),
    ({"components": {"vae": {"strategy": "offload", "release": "swap"}}},
     "components.vae.release: 'swap' is not allowed; valid: drop, d2h"),
    ({"components": {"vae": {"strategy": "resident", "prefetch": True}}},
     "components.vae.prefetch: unknown key for strategy 'resident'; valid keys: strategy"),
    ({"buffer_margin": "lots"}, "buffer_margin: cannot read 'lots' as a size"),
    ({"host": {"pinned": "yes"}}, "host.pinned: must be true or false"),
])
def test_validation_names_the_toml_path(doc, message) -> None:
    with pytest.raises(InputError) as err:
        plan_from_dict(doc, source="p.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("p.toml")


def test_missing_and_unparseable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_plan(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("policy = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_plan(bad)


def test_unknown_component_lists_the_models_components() -> None:
    plan = Plan(components=(("transformer_3", ResidentConfig()),))
    with pytest.raises(InputError, match="components: text_encoder, transformer"):
        plan.check_components({"text_encoder": "text_encoder", "transformer": "dit"})
