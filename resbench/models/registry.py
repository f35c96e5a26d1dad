"""Name → `ModelSpec` registry. Family modules call `register` at import time."""

from __future__ import annotations

import difflib
import importlib

from resbench.errors import InputError
from resbench.models.base import ModelSpec

_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}
_ENGINE_ONLY: set[str] = set()
# Family modules, imported on first lookup so `import resbench` stays cheap.
_FAMILY_MODULES = (
    "resbench.models.wan",
    "resbench.models.flux",
    "resbench.models.qwen_image",
    "resbench.models.hunyuan_video",
    "resbench.models.ltx_video",
    "resbench.engines.specs",  # models only the diffusers engine implements
)
_loaded = False


def register(spec: ModelSpec, *, zoo: bool = True) -> ModelSpec:
    """Make `spec` findable by name and aliases. `zoo=False`: a model the zoo has no modules
    for (only the diffusers engine runs it): listed and found, but not in `all_models()`."""
    for key in (spec.name, *spec.aliases):
        if key in _MODELS or key in _ALIASES:
            raise ValueError(f"model name {key!r} registered twice")
    _MODELS[spec.name] = spec
    if not zoo:
        _ENGINE_ONLY.add(spec.name)
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a family not written yet must not break the rest
            if exc.name != mod:
                raise


def all_models() -> list[ModelSpec]:
    """The zoo's models (each runs on the zoo's own modules)."""
    _load()
    return [m for m in _MODELS.values() if m.name not in _ENGINE_ONLY]


def in_zoo(name: str) -> bool:
    """Whether model `name` (a registered name) runs on the zoo's own modules."""
    _load()
    return name not in _ENGINE_ONLY


def listed_models() -> list[ModelSpec]:
    """Every model `get_model` finds: the zoo's, then those only the diffusers engine runs."""
    _load()
    return [*all_models(), *(m for m in _MODELS.values() if m.name in _ENGINE_ONLY)]


def get_model(name: str) -> ModelSpec:
    """Look up a model by name or alias (case-insensitive); `InputError` lists close matches."""
    _load()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _MODELS:
        return _MODELS[key]
    known = sorted([*_MODELS, *_ALIASES])
    close = difflib.get_close_matches(key, known, n=4, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InputError(f"unknown model {name!r}: {hint}known models: {', '.join(sorted(_MODELS))}")
