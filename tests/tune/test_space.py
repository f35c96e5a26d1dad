"""Search spaces from sweeps/*.toml: validation, conditional parameters, presets, enumeration."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from tune_setup import REPO, WAN_SWEEP

from resbench.errors import InputError
from resbench.residency.plan import HostOptions, Plan
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig, ResidentConfig
from resbench.schedule import Schedule
from resbench.tune.runner import load_presets
from resbench.tune.space import NotRepresentable, SearchSpace, default_sweep_path, load_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_shipped_sweeps_load_and_the_family_picks_the_file(tmp_path: Path) -> None:
    for path in (REPO / "sweeps").glob("*.toml"):
        load_sweep(path)
    assert default_sweep_path("wan", roots=(REPO,)) == REPO / "sweeps" / "wan.toml"
    assert default_sweep_path("flux", roots=(REPO,)) == REPO / "sweeps" / "default.toml"
    with pytest.raises(InputError, match="--sweep"):
        default_sweep_path("flux", roots=(tmp_path,))


def test_parameters_are_named_by_plan_path_and_conditional(space: SearchSpace) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen: set[str] = set()
    for _ in range(60):
        trial = study.ask()
        plan = space.suggest(trial)
        params = trial.params
        seen.update(params)
        for comp in ("text_encoder", "transformer", "vae"):
            strategy = params[f"{comp}.strategy"]
            assert dict(plan.components)[comp].name == strategy
            for other in ("offload", "layerwise"):
                knobs = [p for p in params if p.startswith(f"{comp}.{other}.")]
                assert bool(knobs) == (other == strategy), (strategy, knobs)
        assert ("buffer_margin" in params) == (params["policy"] == "dynamic")
        if params["policy"] == "dynamic":
            assert 256 * 2**20 <= plan.buffer_margin_bytes <= 8 * 2**30
        else:
            assert plan.buffer_margin_bytes == 0
        study.tell(trial, 0.0)
    assert {"policy", "buffer_margin", "host.pinned", "transformer.strategy",
            "transformer.layerwise.group_size", "transformer.layerwise.resident_blocks",
            "transformer.layerwise.placement", "text_encoder.offload.release"} <= seen
    assert not any(p.startswith("transformer_2") for p in seen)  # optional, absent in Wan2.1


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


def test_presets_map_to_parameters_that_rebuild_them(space: SearchSpace) -> None:
    presets = load_presets(REPO / "strategies" / "presets")
    mapped = 0
    for preset in presets:
        try:
            params = space.params_for(preset)
        except NotRepresentable as exc:
            assert str(exc)
            continue
        mapped += 1
        rebuilt = space.plan_from_params(params)
        for comp, kind in space.component_kinds:
            assert rebuilt.config_for(comp, kind) == preset.config_for(comp, kind)
        assert (rebuilt.policy, rebuilt.host.pinned) == (preset.policy, preset.host.pinned)
    assert mapped >= 1 or not presets


def test_plans_outside_the_space_say_why(space: SearchSpace) -> None:
    blocks = Plan(components=(("dit", LayerwiseConfig(resident_blocks=99)),
                              ("default", OffloadConfig())))
    with pytest.raises(NotRepresentable, match="resident_blocks = 99 is outside"):
        space.params_for(blocks)
    capped = Plan(host=HostOptions(pinned_budget_bytes=10), components=(("default", ResidentConfig()),))
    with pytest.raises(NotRepresentable, match="pinned_budget"):
        space.params_for(capped)


def test_small_spaces_enumerate_every_plan_once(tmp_path: Path, schedule: Schedule) -> None:
    path = write(tmp_path, """schema = 1
[plan]
policy = ["static", "dynamic"]
buffer_margin = ["1GiB", "2GiB"]
[components.transformer]
strategies = ["resident", "offload", "layerwise"]
[components.transformer.offload]
prefetch = [true, false]
[components.transformer.layerwise]
group_size = { low = 1, high = 3 }
resident_blocks = [0, 2]
[components.default]
strategies = ["offload"]
""")
    space = load_sweep(path).bind(schedule)
    params = list(space.iter_params())
    per_policy = 1 + 2 + 3 * 2  # resident, offload x prefetch, layerwise x group x resident
    assert len(params) == per_policy * (1 + 2)  # static, dynamic x two margins
    assert len({tuple(sorted(p.items())) for p in params}) == len(params)
    for p in params:
        plan = space.plan_from_params(p)
        assert space.params_for(plan) == p


def test_frugal_plan_streams_everything(space: SearchSpace) -> None:
    plan = space.frugal_plan()
    assert plan.policy == "static"
    for comp, kind in space.component_kinds:
        cfg = plan.config_for(comp, kind)
        assert isinstance(cfg, LayerwiseConfig)
        assert (cfg.group_size, cfg.prefetch_depth) == (1, 0)


def test_the_optional_second_expert_is_skipped_for_wan21(schedule: Schedule) -> None:
    sweep = load_sweep(WAN_SWEEP)
    assert [e.key for e in sweep.entries] == ["text_encoder", "transformer", "transformer_2", "vae"]
    assert [e.key for e in sweep.bind(schedule).entries] == ["text_encoder", "transformer", "vae"]
