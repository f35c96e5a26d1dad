from __future__ import annotations

import json
import os
from importlib import resources

import pytest

from resbench.engines.catalog import ENGINE_MODELS, get_engine_model, load_config
from resbench.errors import InputError
from resbench.models import get_model

CONFIGS = resources.files("resbench.engines") / "configs"


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS))
def test_every_component_has_a_shipped_config_and_a_documented_source(name):
    model = get_engine_model(name)
    folder = CONFIGS / name
    shipped = {p.name for p in folder.iterdir()}
    assert shipped == {"model_index.json", "scheduler.json", *(f"{c}.json" for c in model.component_names)}
    index = model.model_index()
    for component in model.component_names:
        # A two-stage pipeline's upsampler is no component of the pipeline class.
        if model.refine is not None and component == model.refine.upsampler:
            assert component not in index
            continue
        assert isinstance(index[component], list), f"{component} missing from model_index"
    readme = (CONFIGS / "README.md").read_text()
    section = readme.split(f"## {name} ")[1].split("\n## ")[0]
    for file in shipped:
        assert f"`{file}`" in section or file.removesuffix(".json") in section, file


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS))
def test_engine_models_are_zoo_models(name):
    # The zoo spec of the same name gives request defaults and the published counts.
    zoo = get_model(name)
    model = get_engine_model(name)
    assert set(model.component_names) == set(zoo.component_names)
    for role in model.components:
        assert role.kind == zoo.component(role.name).kind


def test_published_values_that_drive_the_schedule():
    wan = get_engine_model("wan2.2-t2v-a14b")
    assert wan.pipeline_class() == "WanPipeline"
    assert wan.pipeline_config() == {"boundary_ratio": 0.875, "expand_timesteps": False}
    scheduler = load_config("wan2.2-t2v-a14b", "scheduler")
    assert scheduler["_class_name"] == "UniPCMultistepScheduler"
    assert scheduler["flow_shift"] == 3.0
    assert get_engine_model("wan2.2-ti2v-5b").pipeline_config() == {"boundary_ratio": None,
                                                                    "expand_timesteps": True}
    assert load_config("wan2.2-ti2v-5b", "scheduler")["flow_shift"] == 5.0
    assert load_config("flux.1-dev", "transformer")["num_single_layers"] == 38


def test_configs_are_found_from_any_folder(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_config("flux.1-dev", "vae")["latent_channels"] == 16
    finally:
        os.chdir(cwd)


def test_shipped_files_are_plain_json_without_bookkeeping_keys():
    for folder in CONFIGS.iterdir():
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            data = json.loads(file.read_text())
            assert not {"_name_or_path", "_diffusers_version", "transformers_version",
                        "torch_dtype"} & set(data), f"{folder.name}/{file.name}"


def test_unknown_model_lists_known_ones():
    with pytest.raises(InputError, match="did you mean wan2.2-t2v-a14b"):
        get_engine_model("wan2.2-t2v-a14")
    with pytest.raises(InputError, match="no shipped config"):
        load_config("flux.1-dev", "transformer_2")
