"""Residency plans: per-component strategy and knobs, a policy, a margin, host options.

TOML shape (schema 1)::

    schema = 1
    name = "sglang-wan2.2"
    description = "..."
    policy = "static"            # static | dynamic | disabled
    buffer_margin = "2GiB"       # bytes as an integer, or a size string

    [host]
    pinned = true                # pinned host copies (fast DMA) or pageable
    pinned_budget = "64GiB"      # optional cap on pinned host bytes

    [components.transformer]     # a component name, a kind group (dit, text_encoder, vae),
    strategy = "layerwise"       # or `default`; the most specific entry wins
    group_size = 1
    prefetch_depth = 1

Strategies (`resbench.residency.strategies`): `resident`, `offload` (`prefetch`, `release`
= drop | d2h), `snapshot` (`prefetch`: offload whose release copies weights changed on the
device — a merged LoRA — back to the host copy, which later loads read), `layerwise`
(`group_size`, `prefetch_depth`, `resident_blocks`, `placement`, `keep_resident`: the
resident blocks stay on the device between requests — steady-state serving; such a plan is
scored on the second of two back-to-back requests), `disabled`.

Every unknown key is an error that lists the valid keys; every bad value names its TOML path.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

import tomli_w

from resbench.errors import InputError
from resbench.fileio import atomic_write_text
from resbench.residency.policies import POLICIES
from resbench.residency.strategies import (
    STRATEGIES,
    DisabledConfig,
    LayerwiseConfig,
    ResidentConfig,
    StrategyConfig,
)
from resbench.units import parse_bytes

SCHEMA = 1
GROUPS = ("dit", "text_encoder", "vae", "default")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostOptions:
    pinned: bool = True
    """Host copies in page-locked memory (DMA at full PCIe speed) or pageable."""
    pinned_budget_bytes: int | None = None
    """Most host bytes that may be pinned; units past it stay pageable. None: no cap."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    name: str = "plan"
    description: str = ""
    policy: str = "static"
    buffer_margin_bytes: int = 0
    """Headroom kept free for activations and allocator slack (dynamic policy decisions)."""
    host: HostOptions = field(default_factory=HostOptions)
    components: tuple[tuple[str, StrategyConfig], ...] = ()
    """(component name or group, config); resolution: name > kind group > default > resident."""

    def __post_init__(self) -> None:
        check_plan(self)

    def config_for(self, component: str, kind: str) -> StrategyConfig:
        table = dict(self.components)
        for key in (component, kind, "default"):
            if key in table:
                return table[key]
        return ResidentConfig()

    def applied_config(self, component: str, kind: str) -> StrategyConfig:
        """The config the manager applies: `config_for`, or `disabled` for every component
        under a policy that manages nothing."""
        if not POLICIES[self.policy].manages:
            return DisabledConfig()
        return self.config_for(component, kind)

    @property
    def keeps_across_requests(self) -> bool:
        """Whether something this plan streams stays on the device from one request to the
        next (a layerwise entry with `keep_resident` and resident blocks): then one request
        is not the plan's cost, the steady state is — the second of two back-to-back
        requests, its memory checked over both (`resbench.execution.execute`)."""
        return POLICIES[self.policy].manages and any(
            isinstance(cfg, LayerwiseConfig) and cfg.keep_resident and cfg.resident_blocks > 0
            for _, cfg in self.components)

    def with_components(self, **configs: StrategyConfig) -> Plan:
        table = dict(self.components)
        table.update(configs)
        return dataclasses.replace(self, components=tuple(table.items()))

    def check_components(self, known: Mapping[str, str], *, source: str = "plan",
                         blocks: Mapping[str, int] | None = None) -> None:
        """Raise if the plan names a component the model lacks (`known`: name → kind), or,
        given `blocks` (component → block count), keeps more blocks resident than it has."""
        for key, _ in self.components:
            if key not in known and key not in GROUPS:
                raise InputError(
                    f"{source}: components.{key}: the model has no component {key!r}; "
                    f"components: {', '.join(known)}; groups: {', '.join(GROUPS)}"
                )
        entries = dict(self.components)
        for component, n in (blocks or {}).items():
            kind = known.get(component, "")
            cfg = self.config_for(component, kind)
            wanted = getattr(cfg, "resident_blocks", 0)
            if wanted > n:
                key = next(k for k in (component, kind, "default") if k in entries)
                raise InputError(
                    f"{source}: components.{key}.resident_blocks = {wanted}, but {component} "
                    f"has {n} blocks; use 0 to {n}")

    def check_merges(self, merged: Mapping[str, Sequence[str]], kinds: Mapping[str, str], *,
                     source: str = "plan") -> None:
        """Raise if the plan gives a component the schedule merges adapters into (`merged`:
        component → adapters, `Schedule.merged`) a strategy that cannot hold it whole on the
        device while the merge changes it (layerwise)."""
        for component, adapters in merged.items():
            cfg = self.applied_config(component, kinds.get(component, ""))
            if not STRATEGIES[cfg.name].merges_on_device:
                able = ", ".join(n for n, c in STRATEGIES.items() if c.merges_on_device)
                raise InputError(
                    f"{source}: {component} cannot be {cfg.name}: the schedule merges "
                    f"{', '.join(adapters)} into its weights on the device; use {able}")

    # -- TOML ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schema": SCHEMA, "name": self.name}
        if self.description:
            doc["description"] = self.description
        doc["policy"] = self.policy
        doc["buffer_margin"] = self.buffer_margin_bytes
        host: dict[str, Any] = {"pinned": self.host.pinned}
        if self.host.pinned_budget_bytes is not None:
            host["pinned_budget"] = self.host.pinned_budget_bytes
        doc["host"] = host
        doc["components"] = {key: config_to_dict(cfg) for key, cfg in self.components}
        return doc

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_toml())


def check_plan(plan: Plan) -> None:
    """Raise `InputError` for the first value out of range in a plan built in Python, with
    the message `plan_from_dict` gives for the same value in a TOML file (a plan that gets
    past this runs: the manager never meets group_size 0 or an unknown policy)."""
    source = f"plan {plan.name!r}"
    if plan.policy not in POLICIES:
        raise InputError(f"{source}: policy: {plan.policy!r} is not a policy; valid: "
                         f"{', '.join(POLICIES)}")
    margin = plan.buffer_margin_bytes
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise InputError(f"{source}: buffer_margin: must be a whole number of bytes ≥ 0, "
                         f"got {margin!r}")
    if not isinstance(plan.host.pinned, bool):
        raise InputError(f"{source}: host.pinned: must be true or false, got {plan.host.pinned!r}")
    budget = plan.host.pinned_budget_bytes
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 0):
        raise InputError(f"{source}: host.pinned_budget: must be a whole number of bytes ≥ 0 "
                         f"or None, got {budget!r}")
    for key, cfg in plan.components:
        where = f"{source}: components.{key}"
        if type(cfg) not in {s.Config for s in STRATEGIES.values()}:
            raise InputError(f"{where}: {cfg!r} is not a strategy config; valid: "
                             f"{', '.join(s.Config.__name__ for s in STRATEGIES.values())}")
        for f in fields(cfg):
            _check_knob(getattr(cfg, f.name), f, f"{where}.{f.name}")


def config_to_dict(cfg: StrategyConfig) -> dict[str, Any]:
    """The config's TOML table: every knob, except one marked `written = "when set"` in its
    field's metadata while at its default (a knob added later leaves the files, and the
    `plan_id`s, of plans that do not use it as they were)."""
    out: dict[str, Any] = {"strategy": cfg.name}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("written") == "when set" and value == f.default:
            continue
        out[f.name] = value
    return out


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan TOML file; errors name the file and the TOML path."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"plan file {str(p)!r} is a folder; give a .toml file")
    if not p.is_file():
        raise InputError(f"plan file {str(p)!r} does not exist")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None
    if not doc:
        raise InputError(f"{p}: the plan is empty; write at least `schema = {SCHEMA}` and a "
                         f"[components.NAME] table with a `strategy` (see strategies/presets/)")
    return plan_from_dict(doc, source=str(p))


def plan_from_dict(doc: dict[str, Any], *, source: str = "plan") -> Plan:
    top = {"schema", "name", "description", "policy", "buffer_margin", "host", "components"}
    _no_unknown(doc, top, source, "")
    schema = doc.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise InputError(f"{source}: schema {schema!r} found; this resbench reads schema {SCHEMA}")
    policy = doc.get("policy", "static")
    if policy not in POLICIES:
        raise InputError(f"{source}: policy: {policy!r} is not a policy; valid: {', '.join(POLICIES)}")
    try:
        margin = parse_bytes(doc.get("buffer_margin", 0), what=f"{source}: buffer_margin",
                             allow_zero=True)
    except InputError as exc:
        raise InputError(str(exc)) from None
    host_doc = doc.get("host", {})
    if not isinstance(host_doc, dict):
        raise InputError(f"{source}: host: must be a table")
    _no_unknown(host_doc, {"pinned", "pinned_budget"}, source, "host.")
    pinned = host_doc.get("pinned", True)
    if not isinstance(pinned, bool):
        raise InputError(f"{source}: host.pinned: must be true or false, got {pinned!r}")
    budget = host_doc.get("pinned_budget")
    budget_bytes = None if budget in (None, "unlimited") else parse_bytes(
        budget, what=f"{source}: host.pinned_budget", allow_zero=True)
    comps_doc = doc.get("components", {})
    if not isinstance(comps_doc, dict):
        raise InputError(f"{source}: components: must be a table of component tables")
    comps = tuple((key, _config_from(value, f"{source}: components.{key}"))
                  for key, value in comps_doc.items())
    return Plan(name=str(doc.get("name", Path(source).stem)), description=str(doc.get("description", "")),
                policy=policy, buffer_margin_bytes=margin,
                host=HostOptions(pinned=pinned, pinned_budget_bytes=budget_bytes), components=comps)


def _config_from(value: Any, where: str) -> StrategyConfig:
    if not isinstance(value, dict):
        raise InputError(f"{where}: must be a table with a `strategy` key")
    name = value.get("strategy")
    if name not in STRATEGIES:
        raise InputError(f"{where}.strategy: {name!r} is not a strategy; valid: {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name].Config
    knobs = {f.name: f for f in fields(cls)}
    _no_unknown(value, {"strategy", *knobs}, where.split(": ")[0], where.split(": ")[1] + ".",
                what=f"strategy {name!r}")
    kwargs: dict[str, Any] = {}
    for key, f in knobs.items():
        if key not in value:
            continue
        kwargs[key] = _check_knob(value[key], f, f"{where}.{key}")
    return cls(**kwargs)


def _check_knob(value: Any, f: dataclasses.Field[Any], where: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(f"{where}: must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: must be an integer, got {value!r}")
        minimum = 1 if f.name == "group_size" else 0
        if value < minimum:
            raise InputError(f"{where}: must be ≥ {minimum}, got {value}")
        return value
    if kind.startswith("Literal"):
        allowed = [a.strip().strip("'\"") for a in kind[len("Literal["):-1].split(",")]
        if value not in allowed:
            raise InputError(f"{where}: {value!r} is not allowed; valid: {', '.join(allowed)}")
        return value
    if get_args(f.type):
        return value
    return value


def _no_unknown(doc: dict[str, Any], valid: set[str], source: str, prefix: str, what: str = "") -> None:
    for key in doc:
        if key not in valid:
            owner = f" for {what}" if what else ""
            raise InputError(f"{source}: {prefix}{key}: unknown key{owner}; valid keys: "
                             f"{', '.join(sorted(valid))}")
