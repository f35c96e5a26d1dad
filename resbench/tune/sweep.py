"""Sweep files (`sweeps/*.toml`): which plans `resbench tune` may try.

Sweep TOML (schema 1)::

    schema = 1
    name = "wan"
    description = "..."

    [plan]
    policy = ["static", "dynamic"]                                  # choices, or one value
    buffer_margin = { low = "256MiB", high = "8GiB", log = true }   # sampled only with dynamic
    pinned = [true, false]                                          # host copies pinned or not

    [components.transformer]      # a component, a kind group (dit, text_encoder, vae) or default
    strategies = ["resident", "offload", "layerwise"]
    optional = true               # skip this entry for a model without such a component

    [components.transformer.layerwise]           # knobs of one strategy, each one of:
    group_size = { low = 1, high = 8 }           #   an int range {low, high, step?, log?}
    resident_blocks = { low = 0, high = "all" }  #   ("all": the component's block count)
    placement = ["prefix", "spaced"]             #   a list of choices, or a single value

A knob the strategy does not have is an `InputError` naming the TOML path and listing the
strategy's knobs; knobs left out keep the strategy's default. A component the sweep does not
name follows the plan's resolution (kind group, then `default`, then resident) — except a
component the schedule merges an adapter into (LTX-2's stage-2 DiT): unless the sweep names
it, it gets its own entry with the ways to keep a merged copy, `MERGED_CHOICES` (resident,
snapshot, or offload: reload the base and re-merge), since a kind group's layerwise could not
hold it. A sweep that names it with a strategy that cannot hold it is an `InputError`.

`load_sweep` validates a file without a model (a bad sweep fails before any work);
`Sweep.bind(schedule)` ties it to one model and gives the `SearchSpace`
(`resbench.tune.space`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from resbench.errors import InputError
from resbench.models.base import REST
from resbench.residency.plan import GROUPS, plan_from_dict
from resbench.residency.policies import POLICIES
from resbench.residency.strategies import STRATEGIES
from resbench.schedule import Schedule
from resbench.tune.space import EntrySpace, Knob, SearchSpace, StrategyChoice
from resbench.units import parse_bytes

SCHEMA = 1
MERGED_CHOICES = ("resident", "snapshot", "offload")
"""A merged component's choices when the sweep does not name it: keep the merged copy
resident, snapshot it (copied back once, the merged copy reloaded), or reload the base and
re-merge in every request (`offload`); each prefetched or not where it moves."""
_PLAN_KEYS = ("policy", "buffer_margin", "pinned")
_RANGE_KEYS = {"low", "high", "step", "log"}


# --------------------------------------------------------------------------- parsed sweep


@dataclass(frozen=True, slots=True)
class Domain:
    """One knob's values as written: `choices`, an int range, or a single fixed `value`."""

    choices: tuple[Any, ...] = ()
    low: int = 0
    high: int | str = 0
    step: int = 1
    log: bool = False
    value: Any = None
    kind: str = "fixed"  # fixed | choices | range

    def bind(self, n_blocks: int) -> BaseDistribution | None:
        if self.kind == "choices":
            return CategoricalDistribution(self.choices)
        if self.kind == "range":
            high = n_blocks if self.high == "all" else int(self.high)
            return IntDistribution(self.low, max(self.low, high), log=self.log, step=self.step)
        return None


@dataclass(frozen=True, slots=True)
class EntrySweep:
    key: str
    strategies: tuple[str, ...]
    knobs: tuple[tuple[str, tuple[tuple[str, Domain], ...]], ...]  # strategy → (field, domain)
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Sweep:
    """A validated sweep file, not yet tied to a model (`bind` does that)."""

    name: str
    source: str
    description: str
    policy: Domain
    buffer_margin: Domain
    pinned: Domain
    entries: tuple[EntrySweep, ...]

    def bind(self, schedule: Schedule) -> SearchSpace:
        """The space for one model: resolve `"all"`, drop optional entries the model lacks."""
        kinds = schedule.kinds
        blocks = {c: sum(1 for u in schedule.component_units(c) if u.name != REST) for c in kinds}
        keys = [e.key for e in self.entries]
        merged = schedule.merged
        auto = [c for c in merged if c not in keys]
        for e in self.entries:
            bad = [n for n in e.strategies if not STRATEGIES[n].merges_on_device]
            if e.key in merged and bad:
                able = ", ".join(n for n, c in STRATEGIES.items() if c.merges_on_device)
                raise InputError(
                    f"{self.source}: components.{e.key}.strategies: {bad[0]} cannot hold "
                    f"{e.key}: the schedule merges {', '.join(merged[e.key])} into it on the "
                    f"device; choose among {able}")
        entries = []
        for e in self.entries:
            if e.key not in kinds and e.key not in GROUPS:
                if e.optional:
                    continue
                raise InputError(f"{self.source}: components.{e.key}: {schedule.model} has no "
                                 f"component {e.key!r}; components: {', '.join(kinds)}; groups: "
                                 f"{', '.join(GROUPS)} (or set optional = true)")
            members = _members(e.key, kinds, keys + auto)
            if not members:
                continue  # every component it would cover has its own entry
            n = min(blocks[c] for c in members)
            choices = []
            for name in e.strategies:
                domains = dict(e.knobs).get(name, ())
                knobs = tuple(Knob(f"{e.key}.{name}.{field}", field, d.bind(n), d.value)
                              for field, d in domains)
                choices.append(StrategyChoice(name, knobs))
            entries.append(EntrySpace(e.key, members, tuple(choices)))
        prefetch = Domain(choices=(True, False), kind="choices").bind(0)
        for c in auto:
            entries.append(EntrySpace(c, (c,), tuple(
                StrategyChoice(name, () if name == "resident" else
                               (Knob(f"{c}.{name}.prefetch", "prefetch", prefetch),))
                for name in MERGED_CHOICES)))
        return SearchSpace(
            name=self.name, source=self.source,
            policy=Knob("policy", "policy", self.policy.bind(0), self.policy.value),
            buffer_margin=Knob("buffer_margin", "buffer_margin_bytes",
                               self.buffer_margin.bind(0), self.buffer_margin.value),
            pinned=Knob("host.pinned", "pinned", self.pinned.bind(0), self.pinned.value),
            entries=tuple(entries), component_kinds=tuple(kinds.items()))


def _members(key: str, kinds: dict[str, str], keys: list[str]) -> tuple[str, ...]:
    """Components whose strategy the entry `key` decides (the plan's resolution order)."""
    if key in kinds:
        return (key,)
    if key == "default":
        return tuple(c for c, k in kinds.items() if c not in keys and k not in keys)
    return tuple(c for c, k in kinds.items() if k == key and c not in keys)


# --------------------------------------------------------------------------- loading


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep TOML; every error names the file and the TOML path."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"sweep file {str(p)!r} does not exist")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None
    return sweep_from_dict(doc, source=str(p))


def sweep_from_dict(doc: dict[str, Any], *, source: str = "sweep") -> Sweep:
    _no_unknown(doc, {"schema", "name", "description", "plan", "components"}, source, "")
    schema = doc.get("schema")
    if schema != SCHEMA:
        raise InputError(f"{source}: schema {schema!r} found; this resbench reads sweep "
                         f"schema {SCHEMA} (write `schema = {SCHEMA}` at the top)")
    plan_doc = _table(doc.get("plan", {}), source, "plan")
    _no_unknown(plan_doc, set(_PLAN_KEYS), source, "plan.")
    policy = _domain(plan_doc.get("policy", "static"), source, "plan.policy")
    for value in _domain_values(policy):
        if value not in POLICIES:
            raise InputError(f"{source}: plan.policy: {value!r} is not a policy; valid: "
                             f"{', '.join(POLICIES)}")
    margin = _domain(plan_doc.get("buffer_margin", 0), source, "plan.buffer_margin", size=True)
    pinned = _domain(plan_doc.get("pinned", True), source, "plan.pinned")
    for value in _domain_values(pinned):
        if not isinstance(value, bool):
            raise InputError(f"{source}: plan.pinned: must be true or false, got {value!r}")
    comps = _table(doc.get("components", {}), source, "components")
    if not comps:
        raise InputError(f"{source}: components: the sweep names no component or group")
    entries = tuple(_entry(key, value, source) for key, value in comps.items())
    return Sweep(name=str(doc.get("name", Path(source).stem)), source=source,
                 description=str(doc.get("description", "")), policy=policy,
                 buffer_margin=margin, pinned=pinned, entries=entries)


def _entry(key: str, value: Any, source: str) -> EntrySweep:
    where = f"components.{key}"
    table = _table(value, source, where)
    _no_unknown(table, {"strategies", "optional", *STRATEGIES}, source, f"{where}.")
    strategies = table.get("strategies")
    if (not isinstance(strategies, list) or not strategies
            or not all(isinstance(s, str) for s in strategies)):
        raise InputError(f"{source}: {where}.strategies: must be a non-empty list of strategy "
                         f"names ({', '.join(STRATEGIES)})")
    for s in strategies:
        if s not in STRATEGIES:
            raise InputError(f"{source}: {where}.strategies: {s!r} is not a strategy; valid: "
                             f"{', '.join(STRATEGIES)}")
    optional = table.get("optional", False)
    if not isinstance(optional, bool):
        raise InputError(f"{source}: {where}.optional: must be true or false")
    knobs = []
    for name in STRATEGIES:
        if name not in table:
            continue
        if name not in strategies:
            raise InputError(f"{source}: {where}.{name}: knobs for strategy {name!r}, which "
                             f"{where}.strategies does not list")
        knobs.append((name, _knobs(key, name, _table(table[name], source, f"{where}.{name}"),
                                   source)))
    return EntrySweep(key=key, strategies=tuple(strategies), knobs=tuple(knobs),
                      optional=optional)


def _knobs(key: str, strategy: str, table: dict[str, Any],
           source: str) -> tuple[tuple[str, Domain], ...]:
    config = STRATEGIES[strategy].Config
    valid = [f.name for f in fields(config)]
    out = []
    for knob, raw in table.items():
        where = f"components.{key}.{strategy}.{knob}"
        if knob not in valid:
            raise InputError(f"{source}: {where}: strategy {strategy!r} has no knob {knob!r}; "
                             f"valid knobs: {', '.join(valid) or '(none)'}")
        domain = _domain(raw, source, where, allow_all=knob == "resident_blocks")
        for value in _domain_values(domain):
            try:
                plan_from_dict({"components": {key: {"strategy": strategy, knob: value}}},
                               source=source)
            except InputError as exc:
                reason = str(exc).removeprefix(f"{source}: components.{key}.{knob}: ")
                raise InputError(f"{source}: {where}: {reason}") from None
        out.append((knob, domain))
    return tuple(out)


def _domain(raw: Any, source: str, where: str, *, size: bool = False,
            allow_all: bool = False) -> Domain:
    def num(v: Any, what: str) -> int:
        if size:
            return parse_bytes(v, what=f"{source}: {what}", allow_zero=True)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{source}: {what}: must be an integer, got {v!r}")
        return v

    if isinstance(raw, list):
        if not raw:
            raise InputError(f"{source}: {where}: an empty list of choices")
        values = tuple(num(v, where) if size else v for v in raw)
        if len(set(map(repr, values))) != len(values):
            raise InputError(f"{source}: {where}: repeated choices in {raw!r}")
        return Domain(choices=values, kind="choices")
    if isinstance(raw, dict):
        _no_unknown(raw, _RANGE_KEYS, source, f"{where}.")
        if "low" not in raw or "high" not in raw:
            raise InputError(f"{source}: {where}: a range needs low and high, e.g. "
                             f"{{ low = 0, high = 4 }}")
        low = num(raw["low"], f"{where}.low")
        high: int | str = ("all" if allow_all and raw["high"] == "all"
                           else num(raw["high"], f"{where}.high"))
        step = raw.get("step", 1)
        log = raw.get("log", False)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise InputError(f"{source}: {where}.step: must be an integer ≥ 1, got {step!r}")
        if not isinstance(log, bool):
            raise InputError(f"{source}: {where}.log: must be true or false, got {log!r}")
        if log and (low < 1 or step != 1):
            raise InputError(f"{source}: {where}: a log range needs low ≥ 1 and step 1")
        if isinstance(high, int) and high < low:
            raise InputError(f"{source}: {where}: high {high} is below low {low}")
        return Domain(low=low, high=high, step=step, log=log, kind="range")
    return Domain(value=num(raw, where) if size else raw, kind="fixed")


def _domain_values(d: Domain) -> tuple[Any, ...]:
    if d.kind == "choices":
        return d.choices
    if d.kind == "range":
        return (d.low,) if d.high == "all" else (d.low, d.high)
    return (d.value,)


def _table(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{source}: {where}: must be a table")
    return value


def _no_unknown(doc: dict[str, Any], valid: set[str], source: str, prefix: str) -> None:
    for key in doc:
        if key not in valid:
            raise InputError(f"{source}: {prefix}{key}: unknown key; valid keys: "
                             f"{', '.join(sorted(valid))}")


def default_sweep_path(family: str, roots: tuple[Path, ...] | None = None) -> Path:
    """`sweeps/<family>.toml`, else `sweeps/default.toml`, under the working directory first,
    then beside the resbench package (a source checkout)."""
    if roots is None:
        roots = (Path.cwd(), Path(__file__).resolve().parents[2])
    for name in (f"{family}.toml", "default.toml"):
        for root in roots:
            path = root / "sweeps" / name
            if path.is_file():
                return path
    raise InputError(f"no sweep for family {family!r}: looked for sweeps/{family}.toml and "
                     f"sweeps/default.toml under {', '.join(map(str, roots))}; pass --sweep")
