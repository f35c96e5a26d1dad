"""The diffusers pipelines the engine builds, and the shipped configs they are built from.

A model is a folder of JSON files under `configs/` (sources in `configs/README.md`):
`model_index.json` names the pipeline class, each component's library and class, and the
pipeline's own config (`boundary_ratio`, `expand_timesteps`); `<component>.json` is that
component's published config. What the files cannot say is recorded here, per component:
its kind (text encoder, DiT, VAE), the dtype it runs in, and for text encoders how the
pipeline calls them and which `__call__` argument takes their output.

Model names are the zoo's (`resbench models`), so a zoo spec and an engine model of the same
name describe the same pipeline; the zoo spec supplies the request defaults and rules. Models
the zoo has no modules for (FLUX.2-dev, LTX-2) get their spec from `resbench.engines.specs`.
The data types are in `resbench.engines.roles`.
"""

from __future__ import annotations

import difflib

import torch

from resbench.engines.roles import (
    ComponentRole,
    EngineModel,
    LoraFacts,
    Published,
    RefineStage,
    TextInput,
    all_hidden_states_packed,
    last_hidden_state,
    load_config,
    mistral_layers_10_20_30,
    pooler_output,
)
from resbench.errors import InputError

__all__ = ["ENGINE_MODELS", "ComponentRole", "EngineModel", "LoraFacts", "Published",
           "RefineStage", "TextInput", "get_engine_model", "load_config"]

_UMT5 = TextInput(length=512, read=last_hidden_state, argument="prompt_embeds",
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


# LTX-2's distilled LoRA for the second stage (diffusers' LTX-2 docs, "Two-stages Generation").
LTX2_DISTILLED_LORA = LoraFacts(
    repository="Lightricks/LTX-2", weight_name="ltx-2-19b-distilled-lora-384.safetensors",
    component="transformer", rank=384, alpha=None, target_modules=(), adapter_scale=1.0,
    source="rank: the published file name (`-lora-384`, the LTX-2 convention for rank 384), "
           "loaded with `set_adapters('stage_2_distilled', 1.0)` in diffusers' LTX-2 docs; "
           "alpha and target modules: not found in any source read (configs/README.md)")

_LTX2 = EngineModel(
    name="ltx-2", is_video=True, true_cfg="guidance_scale", cfg_mode="batched",
    # audio_guidance_scale defaults to 7.0 and keeps CFG on by itself.
    no_cfg=(("audio_guidance_scale", 1.0),),
    description="diffusers LTX2Pipeline: LTX-2 (19B audio+video DiT, Gemma-3-12B), two stages: "
                "x2 latent upsampler, then the DiT again with the distilled LoRA",
    components=(
        ComponentRole(name="text_encoder", kind="text_encoder", dtype=torch.bfloat16,
                      text=TextInput(length=1024, read=all_hidden_states_packed,
                                     hidden_states=True, argument="prompt_embeds",
                                     negative_argument="negative_prompt_embeds",
                                     length_argument="max_sequence_length",
                                     mask_argument="prompt_attention_mask",
                                     negative_mask_argument="negative_prompt_attention_mask"),
                      published=Published(params=12_000_000_000,
                                          source="Gemma 3 model card: 12B (incl. vision)")),
        ComponentRole(name="connectors", kind="text_encoder", dtype=torch.bfloat16),
        ComponentRole(name="transformer", kind="dit", dtype=torch.bfloat16,
                      published=Published(params=19_000_000_000,
                                          source="Lightricks/LTX-2: ltx-2-19b-dev (19B)")),
        ComponentRole(name="latent_upsampler", kind="vae", dtype=torch.bfloat16,
                      entries=(("forward", "upsample"),)),
        ComponentRole(name="vae", kind="vae", dtype=torch.bfloat16),
        ComponentRole(name="audio_vae", kind="vae", dtype=torch.bfloat16,
                      entries=(("decode", "decode"),)),
        ComponentRole(name="vocoder", kind="vae", dtype=torch.bfloat16,
                      entries=(("forward", "decode"),)),
    ),
    refine=RefineStage(
        upsampler="latent_upsampler", upsampler_class=("ltx2", "LTX2LatentUpsamplerModel"),
        upsample_pipeline="LTX2LatentUpsamplePipeline", dit="transformer",
        # diffusers.pipelines.ltx2.utils.STAGE_2_DISTILLED_SIGMA_VALUES
        sigmas=(0.909375, 0.725, 0.421875),
        scheduler=(("use_dynamic_shifting", False), ("shift_terminal", None)),
        call=(("guidance_scale", 1.0), ("noise_scale", 0.909375)), vae_tiling=True,
        lora=LTX2_DISTILLED_LORA),
    notes=("Stage 1 runs the pipeline's defaults besides the request: STG (stg_scale 1.0, "
           "block 28) and modality guidance (modality_scale 3.0) add two transformer calls "
           "per step to the batched CFG call; stage 2 (guidance_scale 1.0, as diffusers' docs) "
           "keeps audio CFG (7.0), STG and modality guidance on.",
           "Stage 2 runs the transformer's base weights: the distilled LoRA's merge is a "
           "residency strategy (LTX2_DISTILLED_LORA holds its published facts).",
           "Stage 2 decodes with VAE tiling on, as the docs do (`vae.enable_tiling()`)."))


_FLUX2 = EngineModel(
    name="flux.2-dev", is_video=False, true_cfg=None,
    description="diffusers Flux2Pipeline: FLUX.2-dev, 32B MMDiT (8 double + 48 single blocks), "
                "Mistral-Small-3.x 24B text encoder (hidden states 10, 20, 30)",
    components=(
        ComponentRole(name="text_encoder", kind="text_encoder", dtype=torch.bfloat16,
                      text=TextInput(length=512, read=mistral_layers_10_20_30, hidden_states=True,
                                     argument="prompt_embeds",
                                     negative_argument="negative_prompt_embeds",
                                     length_argument="max_sequence_length"),
                      published=Published(params=24_000_000_000,
                                          source="Mistral-Small-3.1/3.2-24B model cards: 24B")),
        ComponentRole(name="transformer", kind="dit", dtype=torch.bfloat16,
                      published=Published(params=32_000_000_000,
                                          source="black-forest-labs/FLUX.2-dev card: 32B")),
        ComponentRole(name="vae", kind="vae", dtype=torch.bfloat16),
    ),
    notes=("Guidance is distilled (guidance_scale 4.0 is an input of the transformer): one "
           "pass per step.",
           "The text encoder's LM head is tied to its embeddings as transformers 5.24 reads the "
           "published config (23.34B parameters; 24.01B with a separate head).",))

_QWEN_IMAGE = EngineModel(
    name="qwen-image", is_video=False, true_cfg="true_cfg_scale",
    description="diffusers QwenImagePipeline: Qwen-Image, 20B MMDiT, Qwen2.5-VL-7B text encoder",
    components=(
        ComponentRole(name="text_encoder", kind="text_encoder", dtype=torch.bfloat16,
                      # The prompt template's 34 tokens are encoded, then dropped. No mask:
                      # the pipeline drops an all-ones `prompt_embeds_mask` itself.
                      text=TextInput(length=512, template_tokens=34, read=last_hidden_state,
                                     hidden_states=True, argument="prompt_embeds",
                                     negative_argument="negative_prompt_embeds")),
        ComponentRole(name="transformer", kind="dit", dtype=torch.bfloat16),
        ComponentRole(name="vae", kind="vae", dtype=torch.bfloat16),
    ),
    notes=("True CFG (true_cfg_scale 4.0 with a negative prompt): cond and uncond as two "
           "transformer calls per step.",
           "Text: 512 prompt tokens (the zoo's worst case: the pipeline pads to the longest "
           "prompt) plus the 34-token template."))


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
                          text=TextInput(length=77, read=pooler_output, pooled=True,
                                         argument="pooled_prompt_embeds",
                                         negative_argument="negative_pooled_prompt_embeds")),
            ComponentRole(name="text_encoder_2", kind="text_encoder", dtype=torch.bfloat16,
                          text=TextInput(length=512, read=last_hidden_state,
                                         argument="prompt_embeds",
                                         negative_argument="negative_prompt_embeds",
                                         length_argument="max_sequence_length")),
            ComponentRole(name="transformer", kind="dit", dtype=torch.bfloat16),
            ComponentRole(name="vae", kind="vae", dtype=torch.bfloat16),
        ),
        notes=("Guidance is distilled (guidance_scale is an input of the transformer): one "
               "pass per step; true CFG (true_cfg_scale) is not modelled.",)),
    _LTX2,
    _FLUX2,
    _QWEN_IMAGE,
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
