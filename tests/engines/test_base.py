from __future__ import annotations

import pytest

from resbench.engines.base import ENGINES, default_engine, make_engine, resolve_engine
from resbench.engines.catalog import ENGINE_MODELS
from resbench.errors import InputError
from resbench.models import get_model
from resbench.models.registry import listed_models


def test_diffusers_by_default_for_the_models_it_implements():
    defaults = {spec.name: default_engine(spec) for spec in listed_models()}
    assert {m for m, e in defaults.items() if e == "diffusers"} == set(ENGINE_MODELS)
    assert defaults["wan2.1-t2v-1.3b"] == "zoo"
    assert default_engine("wan2.2") == "diffusers"  # aliases resolve first


def test_engines_by_name():
    spec = get_model("flux.1-dev")
    assert set(ENGINES) == {"diffusers", "zoo"}
    assert resolve_engine(None, spec) == "diffusers"
    assert make_engine("zoo", spec, scale=0.5).name == "zoo"
    engine = make_engine(None, spec, scale=0.5)
    assert (engine.name, engine.scale, engine.spec) == ("diffusers", 0.5, spec)
    with pytest.raises(InputError, match="engine must be one of diffusers, zoo"):
        resolve_engine("comfy", spec)


def test_diffusers_engine_names_what_it_implements():
    with pytest.raises(InputError, match="does not implement wan2.1-t2v-1.3b.*--engine zoo"):
        make_engine("diffusers", get_model("wan2.1-t2v-1.3b"))
