"""A small synthetic pipeline (fixed by hand, independent of the zoo) simulated on h100-80g.

Three stages as a diffusion pipeline has them: a text encoder (offloaded), a DiT streamed
block by block over three denoising steps (layerwise, one group ahead), a VAE (offloaded,
prefetched during denoising). Sizes are tens of MB so everything runs in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from resbench.drivers.replay import simulate
from resbench.execution import RunResult
from resbench.hardware import get_profile
from resbench.models.base import UnitInfo
from resbench.residency import LayerwiseConfig, OffloadConfig, Plan
from resbench.schedule import ComponentUse, Schedule, UnitCall
from resbench.trace import Tracer

MB = 10**6
DATA = Path(__file__).parent.parent / "data"
GOLDEN_TRACE = DATA / "synthetic-h100-80g.trace.json.gz"
CAPACITY = 2 * 10**9


def synthetic_schedule(steps: int = 3) -> Schedule:
    units = []
    sizes = {"text_encoder": (2, 40 * MB, 30 * MB), "transformer": (4, 60 * MB, 10 * MB),
             "vae": (1, 20 * MB, 5 * MB)}
    for comp, (n, block, rest) in sizes.items():
        units += [UnitInfo(comp, f"blocks.{i}", i, block // 2, block) for i in range(n)]
        units.append(UnitInfo(comp, "rest", -1, rest // 2, rest))
    calls: list[UnitCall] = []

    def call(comp: str, unit: str, stage: str, step: int, gemm: int, conv: int = 0) -> None:
        calls.append(UnitCall(index=len(calls), component=comp, unit=unit, stage=stage, step=step,
                              gemm_flops=gemm, attention_flops=0, conv_flops=conv,
                              memory_bytes=MB, op_count=20, activation_bytes=8 * MB))

    for unit in ("rest", "blocks.0", "blocks.1"):
        call("text_encoder", unit, "text_encode", -1, 10**11)
    for step in range(steps):
        call("transformer", "rest", "denoise", step, 10**11)
        for i in range(4):
            call("transformer", f"blocks.{i}", "denoise", step, 6 * 10**11)
    for unit in ("rest", "blocks.0"):
        call("vae", unit, "decode", -1, 0, conv=5 * 10**11)
    return Schedule(
        model="synthetic", scale=1.0,
        request={"height": 64, "width": 64, "frames": 1, "steps": steps},
        units=tuple(units),
        uses=(ComponentUse("text_encode", "text_encoder"), ComponentUse("denoise", "transformer"),
              ComponentUse("decode", "vae")),
        stage_order=("text_encode", "denoise", "decode"), calls=tuple(calls), state_bytes=MB,
        component_kinds=(("text_encoder", "text_encoder"), ("transformer", "dit"), ("vae", "vae")),
    )


def synthetic_plan() -> Plan:
    return Plan(name="synthetic-stream", components=(
        ("default", OffloadConfig()),
        ("dit", LayerwiseConfig(group_size=1, prefetch_depth=1)),
    ))


def simulate_synthetic(plan: Plan | None = None, steps: int = 3) -> tuple[Schedule, RunResult, Tracer]:
    schedule = synthetic_schedule(steps)
    tracer = Tracer()
    result = simulate(schedule, plan or synthetic_plan(), get_profile("h100-80g"),
                      capacity_bytes=CAPACITY, tracer=tracer)
    return schedule, result, tracer


GOLDEN_META = {"name": "synthetic", "model": "synthetic", "plan": "synthetic-stream",
               "device_label": "GPU 0 (simulated h100-80g)", "hardware": "h100-80g",
               "capacity_bytes": CAPACITY}


def make_study(storage: str, name: str = "synthetic-study", *, two_objectives: bool = False,
               context: dict | None = None):
    """An optuna study shaped as `resbench tune` stores one: presets queued first, trials
    with plan TOML, memory numbers and constraints (≤ 0: fits) in their attributes."""
    import warnings

    import optuna

    from resbench.residency import LayerwiseConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=["minimize"] * (2 if two_objectives else 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["latency_s", "peak_device_bytes"][: 2 if two_objectives else 1])
    for key, value in (context or {}).items():
        study.set_user_attr(key, value)
    dist = {"depth": optuna.distributions.IntDistribution(0, 3),
            "group": optuna.distributions.IntDistribution(1, 4)}
    for i in range(12):
        depth, group = i % 4, 1 + i % 3
        plan = synthetic_plan().with_components(dit=LayerwiseConfig(group_size=group, prefetch_depth=depth))
        latency = 0.03 - 0.002 * depth + 0.001 * group
        peak = int(1e8 * (1 + depth) * group)
        fits = i % 5 != 4
        attrs = {"plan_toml": plan.to_toml(), "plan_id": f"p{i}", "fits": fits,
                 "latency_s": latency, "peak_device_bytes": peak, "pinned_host_bytes": 10**8}
        if i < 2:
            attrs["preset"] = ["diffusers-group-offload", "sglang-wan2.2"][i]
        values = [latency, float(peak)] if two_objectives else [latency]
        study.add_trial(optuna.trial.create_trial(
            values=values if fits else [1e6] * len(values), params={"depth": depth, "group": group},
            distributions=dist, user_attrs=attrs,
            constraints={"peak_device": -1.0 if fits else 5e8}))
    return study
