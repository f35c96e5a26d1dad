"""The contract every zoo component follows, and the data that describes a model.

A *component* is one `nn.Module` of a pipeline (text encoder, DiT, VAE). Its residency
*units* are its repeated blocks (each `nn.Module` of the `ModuleList`s named in
`block_attrs`, in that order) plus one unit called `rest` holding every other parameter and
buffer (embeddings, norms, heads). The residency manager moves weights a unit at a time.

Entry points by component kind (the pipeline calls exactly these):

* ``text_encoder``: ``forward(input_ids: LongTensor[B, L]) -> Tensor`` (hidden states, or the
  pooled vector for CLIP-style encoders).
* ``dit``: ``forward(x: Tensor, t: Tensor[B], cond: Mapping[str, Tensor]) -> Tensor`` with the
  same shape as ``x``. ``cond`` holds the outputs of the text encoders under their component
  names (and e.g. ``image_latents`` / ``guidance`` where the family needs them).
* ``vae``: ``encode(x) -> Tensor`` and ``decode(z) -> Tensor``.

Building never allocates: specs build on the ``meta`` device and `materialize` gives the
weights storage (random, seeded, deterministic per component and parameter name) on CPU or GPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from resbench.pipeline import Request

ComponentKind = Literal["text_encoder", "dit", "vae"]
REST = "rest"


class ResidencyComponent(nn.Module):
    """Base class of zoo components: names where the repeated blocks live."""

    #: Dotted attribute paths of the `nn.ModuleList`s whose items are residency units.
    block_attrs: ClassVar[tuple[str, ...]] = ()

    def block_lists(self) -> Iterator[tuple[str, nn.ModuleList]]:
        for path in self.block_attrs:
            owner: nn.Module = self
            for part in path.split("."):
                owner = getattr(owner, part)
            assert isinstance(owner, nn.ModuleList), f"{path} is not a ModuleList"
            yield path, owner


@dataclass(frozen=True, slots=True)
class UnitInfo:
    """One residency unit of a component and the bytes its weights occupy."""

    component: str
    name: str
    block_index: int  # position among the component's blocks; -1 for `rest`
    params: int
    weight_bytes: int


TensorSlot = tuple[nn.Module, str]  # (owner module, parameter or buffer name)


def unit_slots(component: nn.Module) -> dict[str, list[TensorSlot]]:
    """Map unit name → the (module, attribute) slots of its parameters and buffers.

    Units appear in block order, `rest` last. Tensors shared between modules are listed once.
    """
    units: dict[str, list[TensorSlot]] = {}
    claimed: set[int] = set()
    seen: set[int] = set()
    if isinstance(component, ResidencyComponent):
        for path, blocks in component.block_lists():
            for i, block in enumerate(blocks):
                slots = []
                for mod in block.modules():
                    claimed.add(id(mod))
                    for name, t in list(mod.named_parameters(recurse=False)) + list(
                        mod.named_buffers(recurse=False)
                    ):
                        if t is not None and id(t) not in seen:
                            seen.add(id(t))
                            slots.append((mod, name))
                units[f"{path}.{i}"] = slots
    rest: list[TensorSlot] = []
    for mod in component.modules():
        if id(mod) in claimed:
            continue
        for name, t in list(mod.named_parameters(recurse=False)) + list(
            mod.named_buffers(recurse=False)
        ):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                rest.append((mod, name))
    units[REST] = rest
    return units


def slot_tensor(slot: TensorSlot) -> torch.Tensor:
    mod, name = slot
    return getattr(mod, name)


def unit_infos(component_name: str, component: nn.Module) -> list[UnitInfo]:
    """Residency units of `component` with parameter counts and byte sizes (works on meta)."""
    infos = []
    for index, (name, slots) in enumerate(unit_slots(component).items()):
        tensors = [slot_tensor(s) for s in slots]
        params = sum(t.numel() for t in tensors if isinstance(t, nn.Parameter))
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        block_index = -1 if name == REST else index
        infos.append(UnitInfo(component_name, name, block_index, params, nbytes))
    return infos


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _seed_for(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


#: Attribute `build_component` sets on the module it builds: the component's name.
COMPONENT_ATTR = "resbench_component"


def tensor_seed(seed: int, component: str | None, qualname: str) -> int:
    """Generator seed of one parameter: a hash of (seed, component name, qualified name).

    The component name is part of the key so that two components of the same architecture
    (Wan2.2's high- and low-noise experts) get different weights, and running one in place
    of the other changes the output. `component=None` (a module built outside a spec) keys
    on the qualified name alone.
    """
    return _seed_for(seed, qualname if component is None else f"{component}/{qualname}")


def component_of(module: nn.Module, component: str | None = None) -> str | None:
    """`component` if given, else the name `build_component` recorded on `module` (or None)."""
    return component if component is not None else getattr(module, COMPONENT_ATTR, None)


@torch.no_grad()
def materialize(
    module: nn.Module,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
    component: str | None = None,
) -> nn.Module:
    """Give a meta-built module real storage on `device` with seeded random weights.

    Each tensor is drawn from its own generator seeded by (seed, component name, qualified
    name) (`tensor_seed`), so two components of one architecture differ, a component's
    weights do not depend on which other components were materialised, and a CPU and a
    CUDA build of the same module hold the same values (drawn on CPU, then copied).
    `component` defaults to the name `build_component` recorded on the module. Weight
    matrices get N(0, 1/fan_in); 1-D weights named like norm scales get ones; biases and
    other 1-D tensors get small noise; buffers keep `_init_buffer` if the owning module
    defines one, else zeros.
    """
    device = torch.device(device)
    component = component_of(module, component)
    to_empty_keeping_ties(module, device)
    for qualname, p in module.named_parameters():
        gen = torch.Generator().manual_seed(tensor_seed(seed, component, qualname))
        if p.dim() >= 2:
            fan_in = p[0].numel()
            values = torch.randn(p.shape, generator=gen) * (fan_in**-0.5)
        elif qualname.endswith("weight") and ("norm" in qualname or qualname.endswith("g")):
            values = torch.ones(p.shape)
        else:
            values = torch.randn(p.shape, generator=gen) * 0.02
        p.copy_(values.to(p.dtype))
    init_buffers(module)
    return module


TiedGroup = list[tuple[nn.Module, str]]


def tied_parameters(module: nn.Module) -> list[TiedGroup]:
    """Groups of (module, attribute) slots that hold one Parameter object (T5's shared
    embedding and its encoder's `embed_tokens`), first holder first."""
    holders: dict[int, TiedGroup] = {}
    for mod in module.modules():
        for attr, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((mod, attr))
    return [g for g in holders.values() if len(g) > 1]


def retie(groups: list[TiedGroup]) -> None:
    """Make every slot of each group hold its first holder's Parameter again: `to_empty`
    gives each slot its own tensor, so a tied weight would take its bytes twice."""
    for (first, first_attr), *rest in groups:
        p = first._parameters[first_attr]
        for mod, attr in rest:
            mod._parameters[attr] = p


def to_empty_keeping_ties(module: nn.Module, device: torch.device | str) -> None:
    """`module.to_empty(device=device)`, with tied parameters (T5's shared embedding) still
    one Parameter after it: `to_empty` unties them, and a tied weight would then take its
    bytes twice, be copied and moved twice."""
    ties = tied_parameters(module)
    module.to_empty(device=torch.device(device))
    retie(ties)


def init_buffers(module: nn.Module) -> None:
    """Each submodule's buffers as its `_init_buffers` makes them, else zeros (meta ones
    are left alone)."""
    for mod in module.modules():
        init = getattr(mod, "_init_buffers", None)
        if callable(init):
            init()
        else:
            for b in mod.buffers(recurse=False):
                if b is not None and b.device.type != "meta":
                    b.zero_()


# --------------------------------------------------------------------------------------------
# Model descriptions


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """One component of a pipeline: how to build it and what it should weigh."""

    name: str  # role in the pipeline: text_encoder, text_encoder_2, transformer, transformer_2, vae
    kind: ComponentKind
    build: Callable[[float], nn.Module]  # scale -> module; call under `torch.device("meta")`
    published_params: int | None  # full-size count from ../shared/reference/models.md
    description: str = ""
    dtype: torch.dtype = torch.bfloat16
    text_len: int = 0  # tokens fed to a text encoder (0 for other kinds)
    vocab_size: int = 0  # text encoders: ids are drawn below this (scaled models clamp it)


@dataclass(frozen=True, slots=True)
class LatentGeometry:
    """How pixels become latents and latents become tokens."""

    z_channels: int
    vae_stride_t: int  # 1 for image models
    vae_stride_s: int
    patch_t: int
    patch_s: int

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.vae_stride_t + 1 if self.vae_stride_t > 1 else 1

    def tokens(self, height: int, width: int, frames: int) -> int:
        t = self.latent_frames(frames) // self.patch_t
        h = height // self.vae_stride_s // self.patch_s
        w = width // self.vae_stride_s // self.patch_s
        return t * h * w


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    height: int
    width: int
    frames: int
    steps: int
    guidance: float
    shift: float
    cfg: bool  # true classifier-free guidance (two passes or a batch of two)
    cfg_mode: Literal["sequential", "batched"] = "sequential"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model in the zoo: its components, geometry, sampling defaults and request rules.

    `dits` lists the denoisers in order of use; with two, `boundary` is the timestep share
    (t >= boundary * 1000 runs the first, as Wan2.2 A14B does).
    `validate` raises `InputError` stating the rule a request breaks.
    """

    name: str
    family: str
    description: str
    components: tuple[ComponentSpec, ...]
    text_encoders: tuple[str, ...]
    dits: tuple[str, ...]
    vae: str
    latent: LatentGeometry
    defaults: SamplingDefaults
    aliases: tuple[str, ...] = ()
    boundary: float | None = None
    image_conditioning: bool = False  # I2V: the VAE encodes a conditioning clip first
    is_video: bool = True
    validate: Callable[[Request], None] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def component(self, name: str) -> ComponentSpec:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def published_params(self) -> int:
        return sum(c.published_params or 0 for c in self.components)


def build_component(spec: ComponentSpec, scale: float = 1.0) -> nn.Module:
    """Build `spec` on the meta device in its dtype: no weight bytes are allocated.

    The module records `spec.name` (attribute `COMPONENT_ATTR`), which seeds its weights in
    `materialize` and `devices.cuda.fill_random`.
    """
    with torch.device("meta"):
        module = spec.build(scale)
    # A module built in its dtype already (the diffusers engine's) is not cast again.
    if any(p.dtype != spec.dtype for p in module.parameters() if p.is_floating_point()):
        module = module.to(spec.dtype)
    module = module.eval().requires_grad_(False)
    setattr(module, COMPONENT_ATTR, spec.name)
    return module


def scaled_count(n: int, scale: float, minimum: int = 10) -> int:
    """Block count at `scale`: exact at 1, else ≥ min(n, minimum) so streaming stays testable."""
    if scale >= 1:
        return n
    return max(min(n, minimum), round(n * scale))


def scaled_dim(d: int, scale: float, multiple: int = 8) -> int:
    """Width at `scale`: exact at 1, else rounded to `multiple` (at least one multiple)."""
    if scale >= 1:
        return d
    return max(multiple, round(d * scale / multiple) * multiple)
