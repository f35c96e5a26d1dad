"""Build diffusers pipelines from the shipped configs, on meta or with seeded random weights.

`build_pipeline` returns the real diffusers pipeline object (`diffusers.WanPipeline`,
`diffusers.FluxPipeline`) constructed from its components, each built from its config on the
`meta` device: no weight storage, so a 14B transformer builds in about a second. Tokenizers are
left out (`tokenizer=None`): nothing can be downloaded here, and the engine calls the text
encoders with token ids itself, then passes their outputs as `prompt_embeds` & co.

`materialize` gives a meta-built component storage on a device with deterministic random
weights, drawn per (seed, component, parameter name).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import diffusers
import torch
import transformers
from torch import nn

from resbench.engines.catalog import EngineModel, get_engine_model, load_config
from resbench.errors import InputError
from resbench.models.base import scaled_count, scaled_dim, to_empty_keeping_ties
from resbench.models.mmdit import scaled_axes

PIPELINE = "pipeline"
SCHEDULER = "scheduler"

Config = dict[str, Any]
Widths = dict[str, int]  # "sequence": per-token text width, "pooled": pooled text width


# ---------------------------------------------------------------------------------------------
# Scaling: the zoo's rules (resbench/models/*.py `scaled`), applied to the diffusers configs.


def _scale_t5(cfg: Config, s: float, widths: Widths) -> Config:
    heads = max(2, round(cfg["num_heads"] * s))
    head_dim = scaled_dim(cfg["d_kv"], s**0.5, 8)
    return {**cfg, "num_heads": heads, "d_kv": head_dim, "d_model": heads * head_dim,
            "d_ff": scaled_dim(cfg["d_ff"], s, 8), "num_layers": scaled_count(cfg["num_layers"], s),
            "vocab_size": scaled_dim(cfg["vocab_size"], s, 64)}


def _scale_clip(cfg: Config, s: float, widths: Widths) -> Config:
    heads = max(2, round(cfg["num_attention_heads"] * s))
    head_dim = scaled_dim(cfg["hidden_size"] // cfg["num_attention_heads"], s**0.5, 8)
    return {**cfg, "num_attention_heads": heads, "hidden_size": heads * head_dim,
            "projection_dim": heads * head_dim,
            "intermediate_size": scaled_dim(cfg["intermediate_size"], s, 8),
            "num_hidden_layers": scaled_count(cfg["num_hidden_layers"], s),
            "vocab_size": scaled_dim(cfg["vocab_size"], s, 64)}


def _scale_wan_dit(cfg: Config, s: float, widths: Widths) -> Config:
    return {**cfg, "num_attention_heads": max(2, round(cfg["num_attention_heads"] * s**0.5)),
            "attention_head_dim": scaled_dim(cfg["attention_head_dim"], s**0.5, 8),
            "ffn_dim": scaled_dim(cfg["ffn_dim"], s), "num_layers": scaled_count(cfg["num_layers"], s),
            "text_dim": widths["sequence"]}


def _scale_flux_dit(cfg: Config, s: float, widths: Widths) -> Config:
    head_dim = scaled_dim(cfg["attention_head_dim"], s**0.5, 8)
    return {**cfg, "num_attention_heads": max(2, round(cfg["num_attention_heads"] * s)),
            "attention_head_dim": head_dim,
            "axes_dims_rope": list(scaled_axes(cfg["axes_dims_rope"], head_dim)),
            "num_layers": scaled_count(cfg["num_layers"], s),
            "num_single_layers": scaled_count(cfg["num_single_layers"], s),
            "joint_attention_dim": widths["sequence"], "pooled_projection_dim": widths["pooled"]}


def _scale_wan_vae(cfg: Config, s: float, widths: Widths) -> Config:
    out = {**cfg, "base_dim": scaled_dim(cfg["base_dim"], s)}
    if cfg.get("decoder_base_dim") is not None:
        out["decoder_base_dim"] = scaled_dim(cfg["decoder_base_dim"], s)
    return out


def _scale_kl_vae(cfg: Config, s: float, widths: Widths) -> Config:
    base = cfg["block_out_channels"][0]
    ch = scaled_dim(base, s, 8)
    # GroupNorm needs the group count to divide every width; the zoo's AE uses 8 when scaled.
    return {**cfg, "block_out_channels": [ch * c // base for c in cfg["block_out_channels"]],
            "norm_num_groups": 8}


_SCALERS: dict[str, Callable[[Config, float, Widths], Config]] = {
    "UMT5EncoderModel": _scale_t5,
    "T5EncoderModel": _scale_t5,
    "CLIPTextModel": _scale_clip,
    "WanTransformer3DModel": _scale_wan_dit,
    "FluxTransformer2DModel": _scale_flux_dit,
    "AutoencoderKLWan": _scale_wan_vae,
    "AutoencoderKL": _scale_kl_vae,
}


def _text_width(cfg: Config) -> int:
    return int(cfg["d_model"] if "d_model" in cfg else cfg["hidden_size"])


# ---------------------------------------------------------------------------------------------
# Configs


def _valid_keys(model: EngineModel, section: str, shipped: Config) -> set[str]:
    """Keys an override may set: the shipped file's and the constructor's (defaults left out
    of the file are still settable)."""
    keys = {k for k in shipped if not k.startswith("_")}
    if section == PIPELINE:
        return keys
    if section == SCHEDULER:
        cls = getattr(diffusers, shipped["_class_name"])
        return keys | set(inspect.signature(cls.__init__).parameters) - {"self"}
    cls = _component_class(model, section)
    if issubclass(cls, diffusers.ModelMixin):
        return keys | set(inspect.signature(cls.__init__).parameters) - {"self"}
    return keys | set(cls.config_class().to_dict())


def pipeline_configs(model: EngineModel, *, scale: float = 1.0,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Config]:
    """Every config the pipeline is built from: one per component, `scheduler`, `pipeline`.

    At `scale` < 1 widths and block counts shrink by the zoo's rules (exact at 1); text
    widths the DiT reads follow the scaled text encoders. `overrides` then set keys per
    section (a component name, `scheduler` or `pipeline`); unknown sections or keys are
    an `InputError` listing the valid ones.
    """
    if not scale > 0:
        raise InputError(f"scale must be positive, got {scale!r}")
    configs: dict[str, Config] = {r.name: load_config(model.name, r.name) for r in model.components}
    configs[SCHEDULER] = load_config(model.name, SCHEDULER)
    configs[PIPELINE] = model.pipeline_config()
    if scale < 1:
        widths: Widths = {}
        for role in model.components:
            if role.text is not None:
                configs[role.name] = _scale_component(model, role.name, configs[role.name], scale, widths)
                kind = "pooled" if role.text.pooled else "sequence"
                widths[kind] = _text_width(configs[role.name])
        for role in model.components:
            if role.text is None:
                configs[role.name] = _scale_component(model, role.name, configs[role.name], scale, widths)
    for section, values in (overrides or {}).items():
        if section not in configs:
            raise InputError(f"{model.name}: no config section {section!r}; "
                             f"sections: {', '.join(configs)}")
        valid = _valid_keys(model, section, configs[section])
        unknown = sorted(set(values) - valid)
        if unknown:
            raise InputError(f"{model.name}/{section}: unknown config keys {', '.join(unknown)}; "
                             f"valid keys: {', '.join(sorted(valid))}")
        configs[section] = {**configs[section], **values}
    return configs


def _scale_component(model: EngineModel, component: str, cfg: Config, scale: float,
                     widths: Widths) -> Config:
    _, class_name = model.component_class(component)
    if class_name not in _SCALERS:
        raise InputError(f"{model.name}/{component}: no scaling rule for {class_name}")
    return _SCALERS[class_name](cfg, scale, widths)


# ---------------------------------------------------------------------------------------------
# Building on meta


def _fp32_names(module: nn.Module, dtype: torch.dtype) -> tuple[str, ...]:
    """Module names the class keeps in fp32 when loaded in `dtype` (diffusers: always;
    transformers: `_keep_in_fp32_modules` for fp16 only, `_strict` for fp16 and bf16)."""
    if isinstance(module, diffusers.ModelMixin):
        return tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    names = list(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        names += list(getattr(module, "_keep_in_fp32_modules", None) or ())
    return tuple(names)


@torch.no_grad()
def cast_like_from_pretrained(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating tensors to `dtype` the way `from_pretrained(torch_dtype=dtype)` leaves them.

    Parameters and persistent buffers whose name has a component the class keeps in fp32
    stay fp32 (diffusers' rule: `name in param_name.split(".")`). A diffusers model's
    non-persistent buffers (computed in `__init__`, e.g. Wan's RoPE tables) are not in the
    checkpoint, so loading leaves them as built; a transformers model is built in `dtype`.
    """
    keep = _fp32_names(module, dtype)
    tensors: list[tuple[str, torch.Tensor]] = list(module.named_parameters())
    if isinstance(module, diffusers.ModelMixin):
        persistent = set(module.state_dict())
        tensors += [(n, b) for n, b in module.named_buffers() if n in persistent]
    else:
        tensors += list(module.named_buffers())
    for name, tensor in tensors:
        if tensor.is_floating_point():
            target = torch.float32 if any(k in name.split(".") for k in keep) else dtype
            tensor.data = tensor.data.to(target)
    return module


def library_class(library: str, class_name: str) -> Any:
    """A class as `model_index.json` names it: `diffusers`, `transformers`, or a diffusers
    pipeline module (`ltx2` → `diffusers.pipelines.ltx2`), as diffusers' loader reads it."""
    if library in ("diffusers", "transformers"):
        return getattr(diffusers if library == "diffusers" else transformers, class_name)
    return getattr(importlib.import_module(f"diffusers.pipelines.{library}"), class_name)


def _component_class(model: EngineModel, component: str) -> type[nn.Module]:
    return library_class(*model.component_class(component))


def _construct(cls: Any, config: Config) -> nn.Module:
    if issubclass(cls, diffusers.ModelMixin):
        # A published key this diffusers version no longer takes (the Wan2.2 VAE's
        # `clip_output`) would only be ignored with a warning: leave it out quietly.
        accepted = set(inspect.signature(cls.__init__).parameters)
        return cls.from_config({k: v for k, v in config.items() if k in accepted})
    return cls(cls.config_class.from_dict(config))


def build_component(model: EngineModel, component: str, config: Config,
                    dtype: torch.dtype | None = None) -> nn.Module:
    """One component built from `config` on the meta device, eval mode, in `dtype` as
    `from_pretrained(torch_dtype=dtype)` leaves it (None: its role's dtype)."""
    cls = _component_class(model, component)
    with torch.device("meta"):
        module = _construct(cls, config)
    cast_like_from_pretrained(module, dtype or model.role(component).dtype)
    return module.eval().requires_grad_(False)


def build_pipeline(name: str, *, scale: float = 1.0,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   device: torch.device | str = "meta", seed: int = 0,
                   dtype: torch.dtype | None = None) -> diffusers.DiffusionPipeline:
    """The diffusers pipeline of engine model `name`, its components built from the shipped
    configs (scaled, then overridden: see `pipeline_configs`).

    On `device="meta"` nothing is allocated; on any other device each component is
    materialized there with random weights from `seed` (`materialize`). `dtype`: every
    component in it (fp32 for the CPU device); None: each in its role's dtype. No tokenizers.
    """
    model = get_engine_model(name)
    configs = pipeline_configs(model, scale=scale, overrides=overrides)
    return assemble(model, build_components(model, configs, device=device, seed=seed,
                                            dtype=dtype), configs)


def build_components(model: EngineModel, configs: Mapping[str, Config], *,
                     device: torch.device | str = "meta", seed: int = 0,
                     dtype: torch.dtype | None = None) -> dict[str, nn.Module]:
    """Every component of `model` built from `configs` (`pipeline_configs`), materialized
    on `device` unless it is meta (see `build_pipeline`)."""
    components: dict[str, nn.Module] = {}
    for role in model.components:
        module = build_component(model, role.name, configs[role.name], dtype)
        if torch.device(device).type != "meta":
            materialize(module, device, seed=seed, name=role.name)
        components[role.name] = module
    return components


def assemble(model: EngineModel, components: Mapping[str, nn.Module],
             configs: Mapping[str, Config] | None = None) -> diffusers.DiffusionPipeline:
    """The diffusers pipeline object around already built `components` (no copies): a fresh
    scheduler, no tokenizers, the pipeline's own config (`configs`: the shipped ones)."""
    configs = configs if configs is not None else pipeline_configs(model)
    parts: dict[str, Any] = {k: v for k, v in components.items() if model.in_pipeline(k)}
    scheduler_cfg = configs[SCHEDULER]
    parts[SCHEDULER] = getattr(diffusers, scheduler_cfg["_class_name"]).from_config(scheduler_cfg)
    for key, entry in model.model_index().items():
        # Tokenizers (and any other listed component the engine does not build) are None.
        if isinstance(entry, list) and key not in parts:
            parts[key] = None
    pipe_cls = getattr(diffusers, model.pipeline_class())
    pipe = pipe_cls(**parts, **configs[PIPELINE])
    pipe.set_progress_bar_config(disable=True)
    for name, module in components.items():
        # Components outside the pipeline's own (LTX-2's latent upsampler) ride along as plain
        # attributes: not in its config, so `pipe.components` stays the class's own.
        if not model.in_pipeline(name):
            setattr(pipe, name, module)
    return pipe


# ---------------------------------------------------------------------------------------------
# Random weights


def _seed(seed: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build with parameters on meta but buffers real (as accelerate's `init_empty_weights`):
    the values a module computes for its buffers in `__init__`, without weight storage."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _built_tensors(module: nn.Module) -> tuple[dict[str, torch.Tensor],
                                               dict[tuple[str, str], torch.Tensor]]:
    """The buffers `module`'s class computes at construction, and the plain tensor attributes
    of its submodules (Qwen-Image's RoPE tables), from a twin built on CPU with its
    parameters on meta (meta construction leaves them without values)."""
    cls: Any = type(module)
    config = module.config
    with _parameters_on_meta():
        twin = cls.from_config(config) if isinstance(module, diffusers.ModelMixin) else cls(config)
    plain = {(name, attr): value for name, mod in twin.named_modules()
             for attr, value in vars(mod).items() if isinstance(value, torch.Tensor)}
    return dict(twin.named_buffers()), plain


@torch.no_grad()
def materialize(component: nn.Module, device: torch.device | str = "cpu", *, seed: int = 0,
                name: str, draw_on_device: bool = False) -> nn.Module:
    """Give a meta-built component storage on `device` with deterministic random weights.

    Each parameter is drawn on CPU from its own generator seeded by (seed, `name`,
    parameter name), so values do not depend on the device, on other components, or on
    which others were materialized; `transformer` and `transformer_2` of one pipeline differ.
    Weights of rank ≥ 2 get N(0, 1/fan_in); scales of norm layers get ones and their shifts
    zeros; other 1-D parameters N(0, 0.02²). Buffers get the values the class computes.

    `draw_on_device`: draw with a generator on `device` instead (a 14B expert is drawn in
    seconds on a GPU, minutes on a CPU); the values are then the same for every run on the
    same kind of card, not equal to a CPU draw.
    """
    buffers, plain = _built_tensors(component)
    owners = {f"{prefix}.{n}" if prefix else n: mod for prefix, mod in component.named_modules()
              for n, _ in mod.named_parameters(recurse=False)}
    to_empty_keeping_ties(component, device)
    for qualname, p in component.named_parameters():
        on = p.device if draw_on_device else torch.device("cpu")
        gen = torch.Generator(device=on).manual_seed(_seed(seed, f"{name}.{qualname}"))
        if p.dim() >= 2:
            values = torch.randn(p.shape, generator=gen, device=on) * p[0].numel() ** -0.5
        elif _is_norm(owners[qualname]):
            values = torch.zeros(p.shape) if qualname.endswith("bias") else torch.ones(p.shape)
        else:
            values = torch.randn(p.shape, generator=gen, device=on) * 0.02
        p.copy_(values.to(p.dtype))
    for qualname, b in component.named_buffers():
        b.copy_(buffers[qualname])
    for (name, attr), value in plain.items():
        setattr(component.get_submodule(name), attr, value.to(device))
    return component
