"""Search spaces: conditional parameters, presets as parameters, enumeration, frugal plan."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from resbench.residency.plan import HostOptions, Plan
from resbench.residency.strategies import LayerwiseConfig, OffloadConfig, ResidentConfig
from resbench.resources import load_presets
from resbench.schedule import Schedule
from resbench.tune.space import NotRepresentable, SearchSpace
from resbench.tune.sweep import load_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


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


def test_presets_map_to_parameters_that_rebuild_them(space: SearchSpace) -> None:
    presets = list(load_presets().values())
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
