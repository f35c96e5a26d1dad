"""Plan checks added for bad input: an empty file, and resident blocks beyond a component."""

from __future__ import annotations

from pathlib import Path

import pytest

from resbench.errors import InputError
from resbench.residency.plan import Plan, load_plan
from resbench.residency.strategies import LayerwiseConfig

KINDS = {"text_encoder": "text_encoder", "transformer": "dit", "transformer_2": "dit"}


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_plan_file_is_an_error_not_the_defaults(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(InputError, match="p.toml: the plan is empty"):
        load_plan(path)


def test_resident_blocks_beyond_a_component_name_the_entry_and_the_max() -> None:
    plan = Plan(components=(("dit", LayerwiseConfig(resident_blocks=20)),))
    plan.check_components(KINDS, blocks={"transformer": 20, "transformer_2": 40})  # fits both
    with pytest.raises(InputError, match=r"kijai\.toml: components\.dit\.resident_blocks = 20, "
                                         r"but transformer has 19 blocks; use 0 to 19"):
        plan.check_components(KINDS, source="kijai.toml", blocks={"transformer": 19})
    named = plan.with_components(transformer=LayerwiseConfig(resident_blocks=3))
    named.check_components(KINDS, blocks={"transformer": 19, "transformer_2": 40})
    with pytest.raises(InputError, match="components.transformer.resident_blocks = 3"):
        named.check_components(KINDS, blocks={"transformer": 2})


def test_without_block_counts_only_names_are_checked() -> None:
    Plan(components=(("default", LayerwiseConfig(resident_blocks=999)),)).check_components(KINDS)
