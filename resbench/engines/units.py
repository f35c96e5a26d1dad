"""Residency units of a diffusers pipeline's components, the way the zoo cuts its own.

A component's units are its repeated blocks, in order, then `rest`: every parameter and
buffer outside the blocks (embeddings, norms, heads, VAE convs in and out). A block path
naming a `ModuleList` gives one unit per item (`blocks.0`, `blocks.1`, …); a path naming a
single module gives one unit under the path's name (a VAE's `decoder.mid_block`).
Tensors shared between modules (T5's tied embedding) are counted once, in the first unit
that holds them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from resbench.errors import InputError
from resbench.models.base import REST, TensorSlot, UnitInfo

#: Block paths by component class (the first class in the module's MRO that is listed).
BLOCK_PATHS: dict[str, tuple[str, ...]] = {
    "WanTransformer3DModel": ("blocks",),
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "UMT5EncoderModel": ("encoder.block",),
    "T5EncoderModel": ("encoder.block",),
    "CLIPTextModel": ("encoder.layers",),  # transformers 5 layout (no `text_model`)
    "AutoencoderKLWan": ("encoder.down_blocks", "encoder.mid_block", "decoder.mid_block",
                         "decoder.up_blocks"),
    "AutoencoderKL": ("encoder.down_blocks", "encoder.mid_block", "decoder.mid_block",
                      "decoder.up_blocks"),
    # LTX-2
    "LTX2VideoTransformer3DModel": ("transformer_blocks",),
    "Gemma3ForConditionalGeneration": ("model.language_model.layers",),  # vision tower: rest
    "LTX2TextConnectors": ("video_connector.transformer_blocks",
                           "audio_connector.transformer_blocks"),
    "AutoencoderKLLTX2Video": ("encoder.down_blocks", "encoder.mid_block", "decoder.mid_block",
                               "decoder.up_blocks"),
    "AutoencoderKLLTX2Audio": (),  # 53M parameters in all: one unit
    "LTX2Vocoder": ("resnets",),
    "LTX2LatentUpsamplerModel": ("res_blocks", "post_upsample_res_blocks"),
    # FLUX.2-dev
    "Flux2Transformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "Mistral3ForConditionalGeneration": ("model.language_model.layers",),  # vision: rest
    "AutoencoderKLFlux2": ("encoder.down_blocks", "encoder.mid_block", "decoder.mid_block",
                           "decoder.up_blocks"),
    # Qwen-Image
    "QwenImageTransformer2DModel": ("transformer_blocks",),
    "Qwen2_5_VLForConditionalGeneration": ("model.language_model.layers",),  # vision: rest
    "AutoencoderKLQwenImage": ("encoder.down_blocks", "encoder.mid_block", "decoder.mid_block",
                               "decoder.up_blocks"),
}


#: Tensors of a component (attributes of its root module) that the pipeline reads itself,
#: outside the component's calls (LTX-2 normalizes latents with its VAEs' statistics before
#: and after denoising). They belong to no unit: the manager never moves them, so they are
#: where the component was put (a few hundred bytes).
PIPELINE_READ: dict[str, tuple[str, ...]] = {
    "AutoencoderKLLTX2Video": ("latents_mean", "latents_std"),
    "AutoencoderKLLTX2Audio": ("latents_mean", "latents_std"),
    "AutoencoderKLFlux2": ("bn.running_mean", "bn.running_var"),  # FLUX.2 un-normalizes
}


@dataclass(frozen=True, slots=True, eq=False)
class Unit:
    """One residency unit: the modules it covers, its tensors, their count and bytes.

    `modules` is `(block,)` for a block; for `rest`, every module outside the blocks that
    holds a parameter or buffer directly. `slots` are the (module, attribute) pairs of the
    unit's tensors, as `resbench.models.base.unit_slots` gives them for zoo components.
    `block_index` is the position among the component's blocks, -1 for `rest`.
    """

    component: str
    name: str
    block_index: int
    modules: tuple[nn.Module, ...]
    slots: tuple[TensorSlot, ...]
    params: int
    weight_bytes: int

    def info(self) -> UnitInfo:
        return UnitInfo(self.component, self.name, self.block_index, self.params, self.weight_bytes)


def block_paths(module: nn.Module) -> tuple[str, ...]:
    for cls in type(module).__mro__:
        if cls.__name__ in BLOCK_PATHS:
            return BLOCK_PATHS[cls.__name__]
    raise InputError(f"no residency units known for {type(module).__name__}; "
                     f"known classes: {', '.join(sorted(BLOCK_PATHS))}")


def blocks(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(unit name, block module) for every block of `module`, in unit order."""
    for path in block_paths(module):
        owner = module.get_submodule(path)
        if isinstance(owner, nn.ModuleList):
            for i, block in enumerate(owner):
                yield f"{path}.{i}", block
        else:
            yield path, owner


def component_units(component: str, module: nn.Module) -> list[Unit]:
    """The residency units of one component, blocks in order then `rest` (works on meta).
    Tensors in `PIPELINE_READ` are in none."""
    seen: set[int] = {id(functools.reduce(getattr, attr.split("."), module))
                      for cls in type(module).__mro__
                      for attr in PIPELINE_READ.get(cls.__name__, ())}

    def collect(mods: list[nn.Module]) -> tuple[list[nn.Module], list[TensorSlot], int, int]:
        owners: list[nn.Module] = []
        slots: list[TensorSlot] = []
        params = nbytes = 0
        for mod in mods:
            fresh = [(attr, t) for attr, t in [*mod.named_parameters(recurse=False),
                                               *mod.named_buffers(recurse=False)]
                     if t is not None and id(t) not in seen]
            for attr, t in fresh:
                seen.add(id(t))
                slots.append((mod, attr))
                nbytes += t.numel() * t.element_size()
                params += t.numel() if isinstance(t, nn.Parameter) else 0
            if fresh:
                owners.append(mod)
        return owners, slots, params, nbytes

    units = []
    claimed: set[int] = set()
    for index, (name, block) in enumerate(blocks(module)):
        mods = list(block.modules())
        claimed.update(id(m) for m in mods)
        _, slots, params, nbytes = collect(mods)
        units.append(Unit(component, name, index, (block,), tuple(slots), params, nbytes))
    owners, slots, params, nbytes = collect([m for m in module.modules() if id(m) not in claimed])
    units.append(Unit(component, REST, -1, tuple(owners), tuple(slots), params, nbytes))
    return units


def residency_units(pipe: object) -> dict[str, list[Unit]]:
    """Per component of a diffusers pipeline (every `nn.Module` in `pipe.components`), or
    of a mapping of components, its ordered residency units."""
    components = pipe if isinstance(pipe, dict) else getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise InputError(f"{type(pipe).__name__} is not a diffusers pipeline (no `components`)")
    return {name: component_units(name, module) for name, module in components.items()
            if isinstance(module, nn.Module)}
