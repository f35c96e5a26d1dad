"""Run a request through a diffusers pipeline built by the engine: text encoders, then `pipe(...)`.

The pipelines are built without tokenizers, so the engine does the pipeline's
`encode_prompt` itself: each text encoder is called with `batch × length` random token ids
(seeded by the request), `length` being the padded length the pipeline's tokenizer call
produces, and its output goes to the `__call__` argument that takes precomputed embeddings
(`prompt_embeds`, `pooled_prompt_embeds`, and their negatives when CFG is on).

No attention mask is passed: every position holds a token, as for a prompt that fills all
`length` tokens. For such a prompt the pipeline's own path is the same computation (an
all-ones mask is dropped by transformers before SDPA; Wan's trimming to the prompt length
is then a no-op). Shorter prompts would only change values, not shapes or FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from resbench.engines.catalog import EngineModel
from resbench.errors import InputError
from resbench.models.registry import get_model
from resbench.pipeline import Request, validate_request


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
    if request.cfg and request.cfg_mode != "sequential":
        raise InputError(f"{model.name}: diffusers runs CFG as two sequential passes; "
                         f"cfg_mode {request.cfg_mode!r} is not available")


def encode_prompts(pipe: Any, model: EngineModel, request: Request,
                   call: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Call every text encoder as the pipeline would; return the `__call__` embedding kwargs.
    `call`: other `__call__` arguments; one named by a text input's `length_argument` sets
    that encoder's token count."""
    gen = torch.Generator().manual_seed(request.seed)
    prompts = 2 if request.cfg else 1
    out: dict[str, torch.Tensor] = {}
    for role in model.components:
        if role.text is None:
            continue
        encoder = getattr(pipe, role.name)
        device = next(encoder.parameters()).device
        length = (call or {}).get(role.text.length_argument or "", role.text.length)
        for p in range(prompts):
            ids = torch.randint(0, encoder.config.vocab_size, (request.batch, length),
                                generator=gen)
            output = encoder(ids.to(device))
            key = role.text.argument if p == 0 else role.text.negative_argument
            out[key] = getattr(output, role.text.output)
    return out


def call_kwargs(model: EngineModel, request: Request) -> dict[str, Any]:
    """The pipeline's `__call__` arguments for `request` (besides the embeddings)."""
    kwargs: dict[str, Any] = {"height": request.height, "width": request.width,
                              "num_inference_steps": request.steps}
    if model.is_video:
        kwargs["num_frames"] = request.frames
    if model.true_cfg == "guidance_scale":
        # Wan turns CFG on exactly when guidance_scale > 1.
        kwargs["guidance_scale"] = request.guidance if request.cfg else 1.0
    else:
        kwargs["guidance_scale"] = request.guidance  # distilled: an input of the transformer
    return kwargs


@torch.no_grad()
def run_pipeline(pipe: Any, model: EngineModel, request: Request, *,
                 callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
                 output_type: str = "pt", extra: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Run `request`: encode the prompts, then the pipeline's own `__call__` (denoising loop,
    expert switch, decode). Returns the decoded output (or latents, `output_type="latent"`).
    `extra`: more `__call__` arguments (`max_sequence_length` …), seen by `encode_prompts`."""
    validate(model, request)
    embeds = encode_prompts(pipe, model, request, extra)
    # The initial noise is drawn on the CPU from the request's seed: the same on every device.
    noise = torch.Generator().manual_seed(request.seed)
    result = pipe(**embeds, **call_kwargs(model, request), **(extra or {}), output_type=output_type,
                  generator=noise, callback_on_step_end=callback_on_step_end, return_dict=False)
    return result[0]
