"""What an engine model says beyond its shipped config files: the data types of the catalog.

`EngineModel` (one diffusers pipeline) holds `ComponentRole`s (kind, run dtype, where its
calls go, published size), `TextInput`s (how the engine calls a text encoder in the
pipeline's place), and for a two-stage pipeline a `RefineStage` with the published facts of
the LoRA its second stage merges (`LoraFacts`). Everything here is plain data; the
functions that read a text encoder's output are named so that a role can point at one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import torch

from resbench.errors import InputError
from resbench.models.base import ComponentKind

#: Where a kind's calls go by default: (method the pipeline calls, stage of those calls).
DEFAULT_ENTRIES: dict[str, tuple[tuple[str, str], ...]] = {
    "text_encoder": (("forward", "text_encode"),),
    "dit": (("forward", "denoise"),),
    "vae": (("encode", "image_encode"), ("decode", "decode")),
}

#: Stages whose calls are counted in denoising steps (entering one starts step 0).
STEPPED_STAGES = ("denoise", "refine")


def load_config(model: str, file: str) -> dict[str, Any]:
    """A shipped config (`configs/<model>/<file>.json`), found the same way from any folder."""
    path = resources.files("resbench.engines") / "configs" / model / f"{file}.json"
    if not path.is_file():
        raise InputError(f"no shipped config {model}/{file}.json")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# What a pipeline keeps of its text encoder's output


def last_hidden_state(output: Any) -> torch.Tensor:
    """The encoder's last hidden state (T5, umT5; a causal LM's last entry of `hidden_states`,
    after its final norm, as Qwen-Image's `_get_qwen_prompt_embeds` takes it)."""
    if getattr(output, "last_hidden_state", None) is not None:
        return output.last_hidden_state
    return output.hidden_states[-1]


def pooler_output(output: Any) -> torch.Tensor:
    """CLIP's pooled vector (FLUX.1's `pooled_prompt_embeds`)."""
    return output.pooler_output


def all_hidden_states_packed(output: Any) -> torch.Tensor:
    """Every hidden state (embeddings + each layer) stacked on a last axis and flattened into
    the width: LTX-2's `_get_gemma_prompt_embeds` (`torch.stack(..., dim=-1).flatten(2, 3)`)."""
    return torch.stack(output.hidden_states, dim=-1).flatten(2, 3)


def mistral_layers_10_20_30(output: Any) -> torch.Tensor:
    """Hidden states 10, 20 and 30 side by side in the width: FLUX.2's
    `_get_mistral_3_small_prompt_embeds` (`hidden_states_layers=(10, 20, 30)`)."""
    out = torch.stack([output.hidden_states[k] for k in (10, 20, 30)], dim=1)
    b, n, length, width = out.shape
    return out.permute(0, 2, 1, 3).reshape(b, length, n * width)


@dataclass(frozen=True, slots=True, kw_only=True)
class TextInput:
    """How a pipeline calls a text encoder, which the engine does itself (no tokenizer).

    `length`: tokens per prompt, padded to it as the pipeline's tokenizer call does
    (`max_length`); `length_argument`: the `__call__` keyword argument that sets it, None
    when it is fixed. `template_tokens`: tokens of a prompt template the encoder also reads
    and the pipeline then drops from its output (Qwen-Image: 34). `read`: what the pipeline
    keeps of the encoder's output (one of the functions above); `hidden_states`: the
    pipeline asks for every layer's output (`output_hidden_states=True`). `argument` /
    `negative_argument`: the `__call__` keyword arguments that take it for the prompt and
    the negative prompt; `mask_argument` / `negative_mask_argument`: those that take the
    prompt's attention mask, where the pipeline needs one with precomputed embeddings.
    `pooled`: the output is one vector per prompt (its width is a DiT's pooled input).
    """

    length: int
    read: Callable[[Any], torch.Tensor]
    argument: str
    negative_argument: str
    length_argument: str | None = None
    hidden_states: bool = False
    template_tokens: int = 0
    mask_argument: str | None = None
    negative_mask_argument: str | None = None
    pooled: bool = False


# ---------------------------------------------------------------------------------------------
# Components


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """A component's published parameter count and where it is stated."""

    params: int
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentRole:
    """One component of an engine model: its pipeline attribute, kind and run dtype.

    `dtype` is the `torch_dtype` a deployment loads it with (`from_pretrained`); modules the
    class keeps in fp32 stay fp32 (see `build.cast_like_from_pretrained`). `entries`: the
    methods the pipeline calls and the stage of each call (None: the kind's
    `DEFAULT_ENTRIES`; a vocoder is a `vae`-kind component the pipeline calls through
    `forward` after decoding). `published`: the published count, where the zoo has no spec
    of the model to give it.
    """

    name: str
    kind: ComponentKind
    dtype: torch.dtype
    text: TextInput | None = None
    entries: tuple[tuple[str, str], ...] | None = None
    published: Published | None = None

    @property
    def calls(self) -> tuple[tuple[str, str], ...]:
        """(method, stage) of every way the pipeline calls this component."""
        return self.entries if self.entries is not None else DEFAULT_ENTRIES[self.kind]


# ---------------------------------------------------------------------------------------------
# Two-stage pipelines


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraFacts:
    """A published LoRA, as data: what the residency strategies of a merged LoRA need.

    `rank` and `alpha`: as the checkpoint's adapter config states them (None: not stated
    where it was read). `target_modules`: the module names the adapter wraps, as PEFT's
    `target_modules` (suffixes of qualified names). `source`: where each fact was read.
    """

    repository: str
    weight_name: str
    component: str
    rank: int
    alpha: float | None
    target_modules: tuple[str, ...]
    adapter_scale: float
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineStage:
    """A second pass after the pipeline's first: upsample the first pass's latents, then
    run `dit` again (with `lora` merged into it) over `sigmas`, and decode.

    `upsampler`: the component (not one of the pipeline's own: it is built from
    `upsampler_class` and run by `upsample_pipeline`, as the model's docs do);
    `scheduler`: keys set on the pipeline's scheduler config for the second pass;
    `call`: `__call__` arguments of the second pass (besides latents and embeddings);
    `vae_tiling`: the VAE decodes in tiles in the second pass (`vae.enable_tiling()`, as the
    docs do for the doubled size). Its calls of the text side (connectors) and of `dit`
    are recorded in stage `refine`.
    """

    upsampler: str
    upsampler_class: tuple[str, str]
    upsample_pipeline: str
    dit: str
    sigmas: tuple[float, ...]
    scheduler: tuple[tuple[str, Any], ...]
    call: tuple[tuple[str, Any], ...]
    vae_tiling: bool
    lora: LoraFacts


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineModel:
    """A diffusers pipeline the engine can build: shipped configs plus component roles.

    `true_cfg` says which `__call__` argument turns classifier-free guidance on:
    `"guidance_scale"` when it is > 1 (Wan, LTX-2), `"true_cfg_scale"` when it is > 1 and
    negative embeddings are given (Qwen-Image), `None` when the model is guidance-distilled
    (`guidance_scale` is an input of the transformer) and runs one pass per step (FLUX).
    `cfg_mode`: how the pipeline runs the two CFG branches (two calls, or one call on a
    batch of two). `no_cfg`: more `__call__` arguments that turn CFG off (LTX-2's audio
    guidance scale). `refine`: the pipeline's second stage, if it has one.
    """

    name: str
    description: str
    components: tuple[ComponentRole, ...]
    is_video: bool
    true_cfg: Literal["guidance_scale", "true_cfg_scale"] | None
    cfg_mode: Literal["sequential", "batched"] = "sequential"
    no_cfg: tuple[tuple[str, Any], ...] = ()
    refine: RefineStage | None = None
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

    def in_pipeline(self, component: str) -> bool:
        """Whether `component` is one of the pipeline object's own (listed in `model_index`)."""
        return isinstance(self.model_index().get(component), list)

    def component_class(self, component: str) -> tuple[str, str]:
        """(library, class name) of a component, as `model_index.json` gives it (the refine
        stage's upsampler: as the stage gives it)."""
        if self.refine is not None and component == self.refine.upsampler:
            return self.refine.upsampler_class
        library, class_name = self.model_index()[component]
        return library, class_name

    def pipeline_config(self) -> dict[str, Any]:
        """The pipeline's own registered config: every `model_index` entry that is not a
        component (lists name components; `_`-keys are bookkeeping)."""
        return {k: v for k, v in self.model_index().items()
                if not k.startswith("_") and not isinstance(v, list)}
