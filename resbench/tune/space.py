"""Search spaces bound to a model: the plans `resbench tune` may try, as optuna parameters.

A `SearchSpace` comes from a sweep file (`resbench.tune.sweep.load_sweep(path).bind(schedule)`).
Trial parameters are named by where they sit in the plan: `policy`, `buffer_margin`,
`host.pinned`, `transformer.strategy`, `transformer.layerwise.group_size`. They are
conditional: a knob is suggested only when its strategy is chosen, the margin only with the
`dynamic` policy, so the study never holds a parameter that did not shape the plan.

`plan(pick)` builds the plan a sequence of picks gives; `suggest(trial)` picks with optuna,
`plan_from_params` from a params dict, `iter_params` enumerates a small space, `params_for`
maps a plan (a preset) back to parameters, `frugal_plan` is the least memory-hungry plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from resbench.errors import InputError
from resbench.residency.plan import HostOptions, Plan
from resbench.residency.strategies import STRATEGIES, StrategyConfig

Pick = Callable[[str, BaseDistribution], Any]
"""Chooses a parameter's value: `trial.suggest_*`, a lookup in a params dict, an enumerator."""

# Values a memory-frugal plan prefers, most frugal first (used to estimate a minimum budget).
_FRUGAL = ("layerwise", "offload", "static", False, "drop", "prefix")


class NotRepresentable(ValueError):
    """A plan the space cannot produce; the message says which part of it is outside."""


# --------------------------------------------------------------------------- bound space


@dataclass(frozen=True, slots=True)
class Knob:
    param: str
    """Trial parameter name (`transformer.layerwise.group_size`)."""
    field: str
    """Field of the strategy config (or of the plan) it sets."""
    distribution: BaseDistribution | None
    """None: not searched, always `value`."""
    value: Any = None

    def choose(self, pick: Pick) -> Any:
        return self.value if self.distribution is None else pick(self.param, self.distribution)

    def contains(self, value: Any) -> bool:
        d = self.distribution
        if d is None:
            return value == self.value
        if isinstance(d, CategoricalDistribution):
            return any(type(c) is type(value) and c == value for c in d.choices)
        assert isinstance(d, IntDistribution)
        return (isinstance(value, int) and not isinstance(value, bool)
                and d.low <= value <= d.high and (value - d.low) % d.step == 0)


@dataclass(frozen=True, slots=True)
class StrategyChoice:
    name: str
    knobs: tuple[Knob, ...]


@dataclass(frozen=True, slots=True)
class EntrySpace:
    key: str
    """Component name, kind group or `default`: the key written into the plan."""
    members: tuple[str, ...]
    """Components of this model the entry decides."""
    choices: tuple[StrategyChoice, ...]

    @property
    def param(self) -> str:
        return f"{self.key}.strategy"

    @property
    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(tuple(c.name for c in self.choices))

    def choice(self, name: str) -> StrategyChoice:
        for c in self.choices:
            if c.name == name:
                return c
        raise NotRepresentable(f"{self.key}: strategy {name!r} is not in the sweep "
                               f"({', '.join(c.name for c in self.choices)})")


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """A sweep bound to one model. `plan(pick)` builds the plan a sequence of picks gives."""

    name: str
    source: str
    policy: Knob
    buffer_margin: Knob
    pinned: Knob
    entries: tuple[EntrySpace, ...]
    component_kinds: tuple[tuple[str, str], ...]
    pinned_budget_bytes: int | None = None
    """`host.pinned_budget` of every pinned plan (not searched): a host budget below the
    model's bytes, spent on the units copied most (`resbench.residency.pinning`)."""

    def plan(self, pick: Pick, *, name: str = "trial") -> Plan:
        policy = self.policy.choose(pick)
        margin = self.buffer_margin.choose(pick) if policy == "dynamic" else 0
        pinned = self.pinned.choose(pick)
        components: list[tuple[str, StrategyConfig]] = []
        for e in self.entries:
            choice = e.choice(pick(e.param, e.distribution))
            kwargs = {k.field: k.choose(pick) for k in choice.knobs}
            components.append((e.key, STRATEGIES[choice.name].Config(**kwargs)))
        host = HostOptions(pinned=pinned,
                           pinned_budget_bytes=self.pinned_budget_bytes if pinned else None)
        return Plan(name=name, policy=policy, buffer_margin_bytes=int(margin or 0), host=host,
                    components=tuple(components))

    def suggest(self, trial: Any) -> Plan:
        """The plan of an optuna trial (`suggest_categorical` / `suggest_int` per knob)."""

        def pick(param: str, d: BaseDistribution) -> Any:
            if isinstance(d, CategoricalDistribution):
                return trial.suggest_categorical(param, d.choices)
            assert isinstance(d, IntDistribution)
            return trial.suggest_int(param, d.low, d.high, step=d.step, log=d.log)

        return self.plan(pick, name=f"trial-{trial.number}")

    def plan_from_params(self, params: dict[str, Any], *, name: str = "plan") -> Plan:
        return self.plan(lambda param, _d: params[param], name=name)

    def params_for(self, plan: Plan) -> dict[str, Any]:
        """Trial parameters that reproduce `plan`; `NotRepresentable` says why there are none."""
        params: dict[str, Any] = {}
        _put(params, self.policy, plan.policy)
        if plan.policy == "dynamic":
            _put(params, self.buffer_margin, plan.buffer_margin_bytes)
        _put(params, self.pinned, plan.host.pinned)
        if plan.host.pinned_budget_bytes not in (None, self.pinned_budget_bytes):
            raise NotRepresentable(
                f"host.pinned_budget = {plan.host.pinned_budget_bytes} is not part of the search "
                f"space (it gives {self.pinned_budget_bytes})")
        kinds = dict(self.component_kinds)
        for e in self.entries:
            configs = {plan.config_for(c, kinds[c]) for c in e.members}
            if len(configs) != 1:
                raise NotRepresentable(f"{e.key}: the plan treats {', '.join(e.members)} "
                                       f"differently; the sweep gives them one choice")
            cfg = configs.pop()
            choice = e.choice(cfg.name)
            params[e.param] = cfg.name
            searched = {k.field for k in choice.knobs}
            for k in choice.knobs:
                _put(params, k, getattr(cfg, k.field))
            for f in fields(cfg):
                default = f.default if f.default is not MISSING else None
                if f.name not in searched and getattr(cfg, f.name) != default:
                    raise NotRepresentable(f"{e.key}.{cfg.name}.{f.name} = "
                                           f"{getattr(cfg, f.name)!r} is not searched (the sweep "
                                           f"keeps the default {default!r})")
        rebuilt = self.plan_from_params(params)
        for comp, kind in self.component_kinds:
            if rebuilt.config_for(comp, kind) != plan.config_for(comp, kind):
                raise NotRepresentable(f"{comp}: not in the sweep, which leaves it "
                                       f"{rebuilt.config_for(comp, kind).name}")
        return params

    def iter_params(self) -> Iterator[dict[str, Any]]:
        """Every parameter assignment of the space (depth first); only for small spaces."""
        stack: list[list[int]] = [[]]
        while stack:
            prefix = stack.pop()
            taken: list[int] = []
            params: dict[str, Any] = {}

            def pick(param: str, d: BaseDistribution, prefix: list[int] = prefix,
                     taken: list[int] = taken, params: dict[str, Any] = params) -> Any:
                values = _values(d)
                i = len(taken)
                if i < len(prefix):
                    k = prefix[i]
                else:
                    k = 0
                    stack.extend([*taken, alt] for alt in range(len(values) - 1, 0, -1))
                taken.append(k)
                params[param] = values[k]
                return values[k]

            self.plan(pick)
            yield params

    def frugal_plan(self) -> Plan:
        """The space's plan that needs the least device memory, by rule of thumb: streamed
        over whole, static over dynamic, no prefetch, the smallest numbers."""

        def pick(_param: str, d: BaseDistribution) -> Any:
            if isinstance(d, IntDistribution):
                return d.low
            assert isinstance(d, CategoricalDistribution)
            for preferred in _FRUGAL:
                for c in d.choices:
                    if type(c) is type(preferred) and c == preferred:
                        return c
            return d.choices[0]

        return self.plan(pick, name="frugal")


def _put(params: dict[str, Any], knob: Knob, value: Any) -> None:
    if not knob.contains(value):
        where = knob.param
        allowed = (repr(knob.value) if knob.distribution is None
                   else _describe(knob.distribution))
        raise NotRepresentable(f"{where} = {value!r} is outside the sweep ({allowed})")
    if knob.distribution is not None:
        params[knob.param] = value


def _describe(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return ", ".join(map(repr, d.choices))
    assert isinstance(d, IntDistribution)
    return f"{d.low}..{d.high}" + (f" step {d.step}" if d.step != 1 else "")


def _values(d: BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    assert isinstance(d, IntDistribution)
    if d.log and d.high - d.low > 10_000:
        raise InputError(f"cannot enumerate a log range {d.low}..{d.high}; give a list")
    return list(range(d.low, d.high + 1, d.step))
