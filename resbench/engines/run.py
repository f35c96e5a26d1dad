"""Run a request through a diffusers pipeline built by the engine: text encoders, then `pipe(...)`.

The pipelines are built without tokenizers, so the engine does the pipeline's
`encode_prompt` itself: each text encoder is called with `batch × length` random token ids
(seeded by the request), `length` being the padded length the pipeline's tokenizer call
produces, and its output goes to the `__call__` argument that takes precomputed embeddings
(`prompt_embeds`, `pooled_prompt_embeds`, and their negatives when CFG is on).

No attention mask is passed to the encoders: every position holds a token, as for a prompt
that fills all `length` tokens. For such a prompt the pipeline's own path is the same
computation (an all-ones mask is dropped by transformers before SDPA; Wan's trimming to the
prompt length is then a no-op). Shorter prompts would only change values, not shapes or
FLOPs. Pipelines that need the mask with precomputed embeddings (LTX-2) get the all-ones one.

A two-stage model (`EngineModel.refine`: LTX-2) runs as its diffusers docs run it: stage 1
to latents, the latent upsampler, stage 2 from the upsampled latents (`run_two_stages`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import diffusers
import torch

from resbench.engines.roles import EngineModel
from resbench.errors import InputError
from resbench.models.registry import get_model
from resbench.pipeline import Request, validate_request

if TYPE_CHECKING:
    from resbench.engines.hooks import PipelineHookBridge


def default_request(model: EngineModel, **overrides: object) -> Request:
    """The zoo's default request for the same model, with `overrides`."""
    request = Request.for_model(get_model(model.name), **overrides)
    validate(model, request)
    return request


def validate(model: EngineModel, request: Request) -> None:
    """Raise `InputError` for a request this pipeline cannot run as asked."""
    validate_request(get_model(model.name), request)
    if request.cfg and model.true_cfg is None:
        raise InputError(f"{model.name} is guidance-distilled (one pass per step): "
                         "request cfg must be False")
    if request.cfg and request.cfg_mode != model.cfg_mode:
        raise InputError(f"{model.name}: diffusers runs CFG as "
                         f"{'one batch of two' if model.cfg_mode == 'batched' else 'two sequential passes'}"
                         f"; cfg_mode {request.cfg_mode!r} is not available (use {model.cfg_mode!r})")


def encode_prompts(pipe: Any, model: EngineModel, request: Request,
                   call: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Call every text encoder as the pipeline would; return the `__call__` embedding kwargs.
    `call`: other `__call__` arguments; one named by a text input's `length_argument` sets
    that encoder's token count."""
    gen = torch.Generator().manual_seed(request.seed)
    prompts = 2 if request.cfg else 1
    out: dict[str, torch.Tensor] = {}
    for role in model.components:
        text = role.text
        if text is None:
            continue
        encoder = getattr(pipe, role.name)
        device = next(encoder.parameters()).device
        length = (call or {}).get(text.length_argument or "", text.length)
        for p in range(prompts):
            ids = torch.randint(0, encoder.config.get_text_config().vocab_size,
                                (request.batch, length + text.template_tokens), generator=gen)
            kwargs = {"output_hidden_states": True} if text.hidden_states else {}
            embeds = text.read(encoder(ids.to(device), **kwargs))[:, text.template_tokens:]
            out[text.argument if p == 0 else text.negative_argument] = embeds
            mask_argument = text.mask_argument if p == 0 else text.negative_mask_argument
            if mask_argument is not None:
                # Every position holds a token (module doc).
                out[mask_argument] = torch.ones(embeds.shape[:2], dtype=torch.long,
                                                device=embeds.device)
    return out


def call_kwargs(model: EngineModel, request: Request) -> dict[str, Any]:
    """The pipeline's `__call__` arguments for `request` (besides the embeddings)."""
    kwargs: dict[str, Any] = {"height": request.height, "width": request.width,
                              "num_inference_steps": request.steps}
    if model.is_video:
        kwargs["num_frames"] = request.frames
    if model.true_cfg == "guidance_scale":
        # Wan and LTX-2 turn CFG on when guidance_scale > 1.
        kwargs["guidance_scale"] = request.guidance if request.cfg else 1.0
        if not request.cfg:
            kwargs.update(model.no_cfg)
    elif model.true_cfg == "true_cfg_scale":
        # Qwen-Image: true CFG when true_cfg_scale > 1 and negative embeddings are given.
        kwargs["true_cfg_scale"] = request.guidance if request.cfg else 1.0
    else:
        kwargs["guidance_scale"] = request.guidance  # distilled: an input of the transformer
    return kwargs


@torch.no_grad()
def run_pipeline(pipe: Any, model: EngineModel, request: Request, *,
                 callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
                 output_type: str = "pt", extra: Mapping[str, Any] | None = None,
                 bridge: PipelineHookBridge | None = None) -> torch.Tensor:
    """Run `request`: encode the prompts, then the pipeline's own `__call__` (denoising loop,
    expert switch, decode). Returns the decoded output (or latents, `output_type="latent"`).
    `extra`: more `__call__` arguments (`max_sequence_length` …), seen by `encode_prompts`.
    `bridge`: the hook bridge the run reports to (its `on_step_end` is the callback, and a
    second stage runs inside its `refining()`). A two-stage model runs both stages
    (`run_two_stages`)."""
    validate(model, request)
    callback = bridge.on_step_end if bridge is not None else callback_on_step_end
    embeds = encode_prompts(pipe, model, request, extra)
    # The initial noise is drawn on the CPU from the request's seed: the same on every device.
    noise = torch.Generator().manual_seed(request.seed)
    kwargs = {**embeds, **call_kwargs(model, request), **(extra or {}), "generator": noise,
              "callback_on_step_end": callback, "return_dict": False}
    if model.refine is not None:
        return run_two_stages(pipe, model, kwargs, output_type=output_type, bridge=bridge)
    return pipe(**kwargs, output_type=output_type)[0]


def run_two_stages(pipe: Any, model: EngineModel, kwargs: dict[str, Any], *, output_type: str,
                   bridge: PipelineHookBridge | None) -> torch.Tensor:
    """Stage 1 to latents, the latent upsampler, then stage 2 from the upsampled latents with
    the refine stage's sigmas, scheduler and arguments, as the model's diffusers docs run it
    (`RefineStage`). The pipeline's scheduler and VAE tiling are put back afterwards. Returns stage 2's
    video (with `output_type="latent"`: its latents)."""
    refine = model.refine
    assert refine is not None
    video_latents, audio_latents = pipe(**kwargs, output_type="latent")
    upsample = getattr(diffusers, refine.upsample_pipeline)(
        vae=pipe.vae, latent_upsampler=getattr(pipe, refine.upsampler))
    upsample.set_progress_bar_config(disable=True)
    upscaled = upsample(latents=video_latents, output_type="latent", return_dict=False)[0]
    first = pipe.scheduler
    second = type(first).from_config(first.config, **dict(refine.scheduler))
    stage2 = {**kwargs, **dict(refine.call), "sigmas": list(refine.sigmas),
              "num_inference_steps": len(refine.sigmas), "latents": upscaled,
              "audio_latents": audio_latents}
    for size in ("height", "width", "num_frames"):
        stage2.pop(size, None)  # from the latents
    tiling = pipe.vae.use_tiling
    pipe.scheduler = second
    pipe.vae.use_tiling = refine.vae_tiling
    try:
        with bridge.refining(second) if bridge is not None else contextlib.nullcontext():
            return pipe(**stage2, output_type=output_type)[0]
    finally:
        pipe.scheduler = first
        pipe.vae.use_tiling = tiling
