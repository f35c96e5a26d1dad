"""Sweep files: validation with TOML paths, defaults by family, binding to a model."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from tune_setup import REPO, WAN_SWEEP

from resbench.errors import InputError
from resbench.resources import shipped_dir, sweep_path
from resbench.schedule import Schedule
from resbench.tune.sweep import load_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_shipped_sweeps_load_and_the_family_picks_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in (REPO / "sweeps").glob("*.toml"):
        load_sweep(path)
    assert shipped_dir("sweeps") == REPO / "sweeps"  # a checkout reads them where they are
    assert sweep_path("wan") == REPO / "sweeps" / "wan.toml"
    assert sweep_path("flux") == REPO / "sweeps" / "default.toml"
    monkeypatch.setattr("resbench.resources.shipped_dir", lambda kind: tmp_path)
    with pytest.raises(InputError, match="--sweep"):
        sweep_path("flux")


def test_a_knob_the_strategy_lacks_is_an_error_naming_path_and_valid_knobs(tmp_path: Path) -> None:
    path = write(tmp_path, """schema = 1
[components.transformer]
strategies = ["offload", "layerwise"]
[components.transformer.offload]
group_size = [1, 2]
""")
    with pytest.raises(InputError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert str(path) in msg and "components.transformer.offload.group_size" in msg
    assert "valid knobs: prefetch, release" in msg


@pytest.mark.parametrize(("body", "expected"), [
    ('[components.dit]\nstrategies = ["resident"]\n[components.dit.resident]\nprefetch = true\n',
     "valid knobs: (none)"),
    ('[components.dit]\nstrategies = ["streaming"]\n', "'streaming' is not a strategy"),
    ('[components.dit]\nstrategies = ["offload"]\n[components.dit.layerwise]\ngroup_size = 2\n',
     "does not list"),
    ('[components.dit]\nstrategies = ["layerwise"]\n[components.dit.layerwise]\n'
     'group_size = { low = 0, high = 4 }\n', "components.dit.layerwise.group_size: must be ≥ 1"),
    ('[components.dit]\nstrategies = ["layerwise"]\n[components.dit.layerwise]\n'
     'placement = ["prefix", "middle"]\n', "'middle' is not allowed"),
    ('[components.dit]\nstrategies = ["layerwise"]\n[components.dit.layerwise]\n'
     'group_size = { low = 1, hi = 4 }\n', "components.dit.layerwise.group_size.hi: unknown key"),
    ('[plan]\npolicy = ["static", "lazy"]\n[components.dit]\nstrategies = ["offload"]\n',
     "'lazy' is not a policy"),
    ('[plan]\nbuffer_margin = { low = "1 parsec", high = "8GiB" }\n'
     '[components.dit]\nstrategies = ["offload"]\n', "plan.buffer_margin.low"),
    ('[components.dit]\nstrategies = ["offload"]\nspeed = 3\n', "components.dit.speed: unknown key"),
])
def test_bad_sweeps_name_the_toml_path(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "schema = 1\n" + body)
    with pytest.raises(InputError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_schema_and_unknown_components(tmp_path: Path, schedule: Schedule) -> None:
    with pytest.raises(InputError, match="schema None found"):
        load_sweep(write(tmp_path, '[components.dit]\nstrategies = ["offload"]\n'))
    sweep = load_sweep(write(tmp_path, 'schema = 1\n[components.unet]\nstrategies = ["offload"]\n'))
    with pytest.raises(InputError, match="has no component 'unet'"):
        sweep.bind(schedule)


def test_the_optional_second_expert_is_skipped_for_wan21(schedule: Schedule) -> None:
    sweep = load_sweep(WAN_SWEEP)
    assert [e.key for e in sweep.entries] == ["text_encoder", "transformer", "transformer_2", "vae"]
    assert [e.key for e in sweep.bind(schedule).entries] == ["text_encoder", "transformer", "vae"]
