"""`resbench export sglang PLAN`: the sglang diffusion launch flags closest to a plan.

sglang's knobs (notes: shared/reference/sglang-residency.md) are global per component
class, not per component: one DiT mode and prefetch size for every DiT, one switch each for
the text encoders, the image encoder and the VAE, one `--pin-cpu-memory`. Its offload of a
whole component (VanillaD2H) copies the weights back at exit (a real D2H) and, in the
PR-era manager, never prefetches; its layerwise offload keeps consolidated pinned buffers,
prefetches P layers at a time one batch ahead, and releases by re-pointing (no D2H).

Boolean flags are printed with explicit values: their defaults are "auto", which turns
offload on for video models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from resbench.residency.plan import Plan
from resbench.residency.strategies import (
    DisabledConfig,
    LayerwiseConfig,
    OffloadConfig,
    ResidentConfig,
    StrategyConfig,
)

LIFETIME = "--dit-layerwise-residency-lifetime"
PER_REQUEST = "per-request"
"""resbench's default lifetime of resident blocks, which sglang has no value for: compared
between DiTs like a flag, never printed."""
SWITCHES = {"text_encoder": "--text-encoder-cpu-offload", "vae": "--vae-cpu-offload"}
"""The whole-component offload switch of each non-DiT kind."""


@dataclass(frozen=True, slots=True)
class SglangExport:
    flags: tuple[str, ...]
    """Launch flags, one `--flag value` each."""
    unexpressed: tuple[str, ...] = field(default=())
    """What of the plan the flags do not say, one line each."""

    def render(self) -> str:
        lines = ["# sglang diffusion launch flags closest to the plan", " \\\n".join(self.flags)]
        if self.unexpressed:
            lines += ["", "# not expressible in sglang's flags:"]
            lines += [f"#  - {line}" for line in self.unexpressed]
        return "\n".join(lines)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def prefetch_size(cfg: LayerwiseConfig) -> int:
    """sglang's `--dit-offload-prefetch-size` (an absolute layer count): P layers are fetched
    together one batch ahead, so P = group size × depth keeps as many layers in flight."""
    return max(1, cfg.group_size * max(1, cfg.prefetch_depth))


def _dit(name: str, cfg: StrategyConfig, notes: list[str]) -> list[str]:
    if isinstance(cfg, ResidentConfig | DisabledConfig):
        return ["--dit-cpu-offload false", "--dit-layerwise-offload false"]
    if isinstance(cfg, OffloadConfig):
        if cfg.release == "drop":
            notes.append(f"{name}: release=drop (free the device copy, no D2H): sglang's "
                         "--dit-cpu-offload copies the weights back at exit; only "
                         f"`--component-residency {name}=snapshot-offload` (newer sglang) drops")
        if cfg.prefetch:
            notes.append(f"{name}: prefetch=true: the PR-era --dit-cpu-offload loads when the "
                         "stage starts (later versions prefetch on a side stream)")
        return ["--dit-cpu-offload true", "--dit-layerwise-offload false"]
    assert isinstance(cfg, LayerwiseConfig)
    size = prefetch_size(cfg)
    flags = ["--dit-cpu-offload false", "--dit-layerwise-offload true",
             f"--dit-offload-prefetch-size {size}"]
    if cfg.prefetch_depth == 0:
        notes.append(f"{name}: prefetch_depth=0 (load each group when reached): sglang always "
                     "prefetches one batch ahead")
    elif cfg.prefetch_depth > 1:
        notes.append(f"{name}: {cfg.prefetch_depth} groups of {cfg.group_size} in flight: sglang "
                     f"fetches {size} layers per batch, one batch ahead (the same layers in "
                     "flight, in larger batches)")
    # always set (0 dropped at the end), so that DiTs that differ in it are caught
    flags.append(f"--dit-layerwise-resident-layers {cfg.resident_blocks}")
    if cfg.resident_blocks:
        policy = "leading" if cfg.placement == "prefix" else "strided"
        notes.append(f"{name}: {cfg.resident_blocks} resident blocks need a sglang with "
                     f"--dit-layerwise-resident-layers, placed {policy!r} "
                     f"(placement={cfg.placement}); older versions stream every layer")
        # always set (per-request dropped at the end), so that DiTs that differ are caught;
        # its values are known only from launch commands seen in use, which the notes say
        flags.append(f"{LIFETIME} {'permanent' if cfg.keep_resident else PER_REQUEST}")
        if cfg.keep_resident:
            notes.append(f"{name}: keep_resident=true (resident blocks kept from one request "
                         "to the next): --dit-layerwise-residency-lifetime permanent, a flag of "
                         "newer sglang builds (values seen in use: permanent, forward); older "
                         "versions have no lifetime flag")
        else:
            notes.append(f"{name}: the resident blocks come in with each request and leave at "
                         "its end (keep_resident=false); sglang's "
                         "--dit-layerwise-residency-lifetime (newer builds; values seen in use: "
                         "permanent, forward) has no per-request lifetime")
    return flags


def _other(name: str, kind: str, cfg: StrategyConfig, notes: list[str]) -> list[str]:
    switch = SWITCHES[kind]
    if isinstance(cfg, ResidentConfig | DisabledConfig):
        return [f"{switch} false"]
    if isinstance(cfg, LayerwiseConfig):
        notes.append(f"{name}: layerwise on a {kind.replace('_', ' ')}: the legacy flags only "
                     f"offload it whole ({switch} true); newer sglang has "
                     f"`--component-residency {kind}=layerwise-offload` (prefetch size and "
                     "resident blocks are the DiT's)")
        return [f"{switch} true"]
    assert isinstance(cfg, OffloadConfig)
    if cfg.release == "drop":
        notes.append(f"{name}: release=drop: {switch} copies the weights back at exit (D2H)")
    if cfg.prefetch:
        notes.append(f"{name}: prefetch=true: the PR-era manager never prefetches a "
                     "CPU-offloaded component (later versions do, on a side stream)")
    return [f"{switch} true"]


def sglang_flags(plan: Plan, kinds: Mapping[str, str]) -> SglangExport:
    """The flags closest to `plan` for a model whose components have `kinds`
    (component → dit | text_encoder | vae)."""
    notes: list[str] = []
    by_flag: dict[str, str] = {}
    owner: dict[str, str] = {}

    def put(component: str, flags: list[str]) -> None:
        for flag in flags:
            key, _, value = flag.partition(" ")
            if key in by_flag and by_flag[key] != value:
                notes.append(f"{component}: wants {key} {value}, but the flag is global and "
                             f"{owner[key]} set it to {by_flag[key]}")
                continue
            by_flag.setdefault(key, value)
            owner.setdefault(key, component)

    for component, kind in kinds.items():
        cfg = plan.applied_config(component, kind)
        if kind == "dit":
            put(component, _dit(component, cfg, notes))
        elif kind in SWITCHES:
            put(component, _other(component, kind, cfg, notes))
        else:
            notes.append(f"{component}: kind {kind} has no sglang switch")
    put("plan", [f"--pin-cpu-memory {_bool(plan.host.pinned)}"])
    if plan.host.pinned_budget_bytes is not None:
        notes.append(f"host.pinned_budget = {plan.host.pinned_budget_bytes} B: sglang pins all "
                     "or nothing (--pin-cpu-memory)")
    if plan.policy == "dynamic":
        notes.append(f"policy=dynamic (keep / prefetch while {plan.buffer_margin_bytes} B stay "
                     "free): sglang's dynamic residency budget "
                     "(component_residency_dynamic_budget) keeps a component if its size + "
                     "2 GiB fits; no launch flag for it was found")
    flags = tuple(f"{k} {v}" for k, v in by_flag.items()
                  if (k, v) not in (("--dit-layerwise-resident-layers", "0"),
                                    (LIFETIME, PER_REQUEST)))
    return SglangExport(flags, tuple(notes))
