"""Study names, storages and samplers."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler
from optuna.storages import JournalStorage, RDBStorage

from resbench.errors import InputError
from resbench.models.registry import get_model
from resbench.pipeline import Request
from resbench.tune.study import budget_label, make_sampler, open_storage, study_name


def test_study_name_says_model_hardware_budget_and_request() -> None:
    spec = get_model("wan2.2")
    request = Request.for_model(spec, height=480, width=832, frames=81, steps=40)
    assert (study_name(spec.name, "h100-80g", 48 * 10**9, request)
            == "wan2.2-t2v-a14b__h100-80g__48GB__480x832x81s40cfg")
    other = Request.for_model(spec, height=480, width=832, cfg=False)
    assert study_name(spec.name, "h100-80g", 48 * 2**30, other, scale=0.05, pareto=True) == (
        "wan2.2-t2v-a14b__h100-80g__48GiB__480x832x81s40nocfg__scale0.05__pareto")


@pytest.mark.parametrize(("nbytes", "label"), [
    (48 * 10**9, "48GB"), (48 * 2**30, "48GiB"), (1536 * 2**20, "1536MiB"),
    (50_000_000, "50MB"), (47_500_000_001, "47.5GB"), (999, "999B"),
])
def test_budget_label(nbytes: int, label: str) -> None:
    assert budget_label(nbytes) == label


def test_storages_open_from_urls_and_paths(tmp_path: Path) -> None:
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'a.db'}"), RDBStorage)
    assert isinstance(open_storage(str(tmp_path / "b.db")), RDBStorage)
    assert isinstance(open_storage(str(tmp_path / "sub" / "c.log")), JournalStorage)
    assert (tmp_path / "sub").is_dir()


@pytest.mark.parametrize("url", ["nosuchdb://host/x", "sqlite:////proc/no/such/dir/x.db",
                                 "just-a-name", "postgresql://user@127.0.0.1:1/none"])
def test_a_storage_that_cannot_be_opened_names_its_url(url: str) -> None:
    with pytest.raises(InputError) as err:
        open_storage(url)
    assert url in str(err.value) and "\n" not in str(err.value)


def test_samplers() -> None:
    assert isinstance(make_sampler("tpe", seed=0, n_objectives=1), TPESampler)
    assert isinstance(make_sampler("random", seed=0, n_objectives=1), RandomSampler)
    assert isinstance(make_sampler("nsga2", seed=0, n_objectives=2), NSGAIISampler)
    with pytest.raises(InputError, match="unknown sampler 'cmaes'; valid: tpe, random, nsga2"):
        make_sampler("cmaes", seed=0, n_objectives=1)
