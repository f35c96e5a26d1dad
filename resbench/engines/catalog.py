"""The diffusers pipelines the engine builds, and the shipped configs they are built from.

A model is a folder of JSON files under `configs/` (sources in `configs/README.md`):
`model_index.json` names the pipeline class, each component's library and class, and the
pipeline's own config (`boundary_ratio`, `expand_timesteps`); `<component>.json` is that
component's published config. What the files cannot say is recorded here, per component:
its kind (text encoder, DiT, VAE), the dtype it runs in, and for text encoders how the
pipeline calls them and which `__call__` argument takes their output.

Model names are the zoo's (`resbench models`), so a zoo spec and an engine model of the same
name describe the same pipeline; the zoo spec supplies the request defaults and rules.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import torch

from resbench.errors import InputError
from resbench.models.base import ComponentKind

#: Stage a component kind's calls belong to (VAE encode is `image_encode`, decode `decode`).
STAGE_OF_KIND = {"text_encoder": "text_encode", "dit": "denoise"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TextInput:
    """How a pipeline calls a text encoder, which the engine does itself (no tokenizer).

    `length`: tokens per prompt, padded to it as the pipeline's tokenizer call does
    (`max_length`); `length_argument`: the `__call__` keyword argument that sets it, None
    when it is fixed. `output`: the field of the encoder's output the pipeline keeps
    (`last_hidden_state` or CLIP's `pooler_output`). `argument` / `negative_argument`: the
    `__call__` keyword arguments that take it for the prompt and the negative prompt.
    """

    length: int
    output: Literal["last_hidden_state", "pooler_output"]
    argument: str
    negative_argument: str
    length_argument: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentRole:
    """One component of an engine model: its pipeline attribute, kind and run dtype.

    `dtype` is the `torch_dtype` a deployment loads it with (`from_pretrained`); modules the
    class keeps in fp32 stay fp32 (see `build.cast_like_from_pretrained`).
    """

    name: str
    kind: ComponentKind
    dtype: torch.dtype
    text: TextInput | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineModel:
    """A diffusers pipeline the engine can build: shipped configs plus component roles.

    `true_cfg` says how the pipeline runs classifier-free guidance: `"guidance_scale"` when `guidance_scale > 1` turns it on (Wan),
    `None` when the model is guidance-distilled and runs one pass per step (FLUX.1-dev).
    """

    name: str
    description: str
    components: tuple[ComponentRole, ...]
    is_video: bool
    true_cfg: Literal["guidance_scale"] | None
    notes: tuple[str, ...] = ()

    def role(self, component: str) -> ComponentRole:
        for r in self.components:
            if r.name == component:
                return r
        raise KeyError(component)

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.components)

    def of_kind(self, kind: ComponentKind) -> tuple[str, ...]:
        return tuple(r.name for r in self.components if r.kind == kind)

    def model_index(self) -> dict[str, Any]:
        return load_config(self.name, "model_index")

    def pipeline_class(self) -> str:
        return str(self.model_index()["_class_name"])

    def component_class(self, component: str) -> tuple[str, str]:
        """(library, class name) of a component, as `model_index.json` gives it."""
        library, class_name = self.model_index()[component]
        return library, class_name

    def pipeline_config(self) -> dict[str, Any]:
        """The pipeline's own registered config: every `model_index` entry that is not a
        component (lists name components; `_`-keys are bookkeeping)."""
        return {k: v for k, v in self.model_index().items()
                if not k.startswith("_") and not isinstance(v, list)}


def load_config(model: str, file: str) -> dict[str, Any]:
    """A shipped config (`configs/<model>/<file>.json`), found the same way from any folder."""
    path = resources.files("resbench.engines") / "configs" / model / f"{file}.json"
    if not path.is_file():
        raise InputError(f"no shipped config {model}/{file}.json")
    return json.loads(path.read_text())


_UMT5 = TextInput(length=512, output="last_hidden_state", argument="prompt_embeds",
                  negative_argument="negative_prompt_embeds",
                  length_argument="max_sequence_length")


def _wan(name: str, description: str, dits: tuple[str, ...], notes: tuple[str, ...]) -> EngineModel:
    return EngineModel(
        name=name, description=description, is_video=True, true_cfg="guidance_scale",
        components=(
            ComponentRole(name="text_encoder", kind="text_encoder", dtype=torch.bfloat16, text=_UMT5),
            *(ComponentRole(name=d, kind="dit", dtype=torch.bfloat16) for d in dits),
            # The diffusers Wan docs and examples load the VAE in fp32.
            ComponentRole(name="vae", kind="vae", dtype=torch.float32),
        ),
        notes=notes)


ENGINE_MODELS: dict[str, EngineModel] = {m.name: m for m in (
    _wan("wan2.2-t2v-a14b", "diffusers WanPipeline: Wan2.2 T2V, two 14B experts switched at "
         "boundary_ratio 0.875", ("transformer", "transformer_2"),
         ("The shipped scheduler has flow_shift 3.0 (the official code samples with 12.0), so "
          "the expert split differs from the zoo's.",)),
    _wan("wan2.2-ti2v-5b", "diffusers WanPipeline: Wan2.2 TI2V 5B with the 16x Wan2.2 VAE, "
         "per-token timesteps (expand_timesteps)", ("transformer",), ()),
    EngineModel(
        name="flux.1-dev", is_video=False, true_cfg=None,
        description="diffusers FluxPipeline: FLUX.1-dev, CLIP-L pooled + T5-XXL, 12B MMDiT",
        components=(
            ComponentRole(name="text_encoder", kind="text_encoder", dtype=torch.bfloat16,
                          text=TextInput(length=77, output="pooler_output",
                                         argument="pooled_prompt_embeds",
                                         negative_argument="negative_pooled_prompt_embeds")),
            ComponentRole(name="text_encoder_2", kind="text_encoder", dtype=torch.bfloat16,
                          text=TextInput(length=512, output="last_hidden_state",
                                         argument="prompt_embeds",
                                         negative_argument="negative_prompt_embeds",
                                         length_argument="max_sequence_length")),
            ComponentRole(name="transformer", kind="dit", dtype=torch.bfloat16),
            ComponentRole(name="vae", kind="vae", dtype=torch.bfloat16),
        ),
        notes=("Guidance is distilled (guidance_scale is an input of the transformer): one "
               "pass per step; true CFG (true_cfg_scale) is not modelled.",)),
)}


def get_engine_model(name: str) -> EngineModel:
    """Look up an engine model by name (case-insensitive); `InputError` lists close matches."""
    key = name.strip().lower()
    if key in ENGINE_MODELS:
        return ENGINE_MODELS[key]
    close = difflib.get_close_matches(key, ENGINE_MODELS, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InputError(f"no diffusers engine model {name!r}: {hint}"
                     f"known: {', '.join(sorted(ENGINE_MODELS))}")
