"""Seconds for unit calls and copies on a `HardwareProfile`.

The model of one call `c` on profile `p`::

    gpu_s(c) = sum over k in (gemm, attention, conv), where f_k > 0, of (f_k + half_k) / peak_k
               + c.gemm_fp32_flops / p.gemm_fp32_flops_per_s
               + c.conv_fp32_flops / p.conv_fp32_flops_per_s
               + c.memory_bytes / (p.hbm_bytes_per_s · p.elementwise_efficiency)
    cpu_s(c) = c.op_count · p.kernel_launch_s
    time(c)  = max(gpu_s(c), cpu_s(c))

* ``(f + half) / peak`` is ``f / throughput(f)`` with ``throughput(f) = peak·f / (f + half)``:
  an op class reaches half its peak at `half` FLOPs per call, i.e. pays a fixed
  ``half / peak`` seconds per call (~3 us for an H100's GEMMs).
* attention with a measured `attention_curve` (rates at the pipelines' own sequence lengths
  and head counts, `resbench calibrate`): ``f / rate(f)``, the rate interpolated linearly
  in log FLOPs between the curve's points and held at the last point beyond it; below the
  first point the ``(f + half) / peak`` fit applies (small calls: text encoders).
* ``gemm``/``conv`` are the bf16/fp16 classes; GEMMs and convs with fp32 inputs run at
  their own, much lower rates (SIMT FFMA GEMMs, TF32 convs with layout transposes) and
  have no per-call fixed cost of their own (their calls are large: Wan's time embedding,
  the fp32 VAE).
* `memory_bytes` counts the bytes memory-bound ops (norms, elementwise, casts, copies) read
  plus write; such kernels reach `elementwise_efficiency` of the copy bandwidth (0.71 fitted
  on the H100: strided and broadcasting operands, small kernels; `resbench calibrate`
  measures it as counted bytes per second of real blocks' kernel mix, `resbench.kernel_mix`).
* the profile's `*_workspace_*` fields are memory, not time: the simulated device adds them
  to a VAE call's working memory (`SimDevice.working_bytes`).
* Eager PyTorch queues kernels ahead of the GPU, so the CPU's dispatch (~11 us an op on the
  H100 machine, `resbench calibrate`) overlaps the GPU's work: a call costs the larger of the
  two, not their sum. Small calls are dispatch-bound, large ones compute-bound.

An adapter merge (`MergeCall`) is priced by the same formula from its GEMM FLOPs, bytes and
kernels (`merge_time_s`).

`overrides` maps (component, unit) to measured seconds of one call of that unit on the real
card; an override replaces the model for every call of the unit.

Copies cost ``transfer_latency_s + nbytes / bandwidth`` (`HardwareProfile.transfer_time_s`);
slowdown of compute beside a copy (`copy_compute_slowdown`) is the simulator's to apply, as
only it knows when spans overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from resbench.errors import InputError
from resbench.hardware import Direction, HardwareProfile

if TYPE_CHECKING:
    from resbench.schedule import MergeCall, UnitCall


def class_time_s(flops: float, peak_flops_per_s: float, half_flops: float) -> float:
    """Seconds for `flops` of one op class: flops / (peak·f/(f + half)); 0 for no work."""
    return (flops + half_flops) / peak_flops_per_s if flops > 0 else 0.0


def curve_rate(flops: float, curve: tuple[tuple[float, float], ...]) -> float:
    """The rate of a call of `flops` on a measured (FLOPs, FLOP/s) curve: linear in
    log FLOPs between points, the last point's rate beyond them. `flops` ≥ the first point."""
    for (f0, r0), (f1, r1) in zip(curve, curve[1:], strict=False):
        if flops <= f1:
            w = math.log(flops / f0) / math.log(f1 / f0)
            return r0 + w * (r1 - r0)
    return curve[-1][1]


def attention_time_s(flops: float, profile: HardwareProfile) -> float:
    """Seconds of one call's attention FLOPs: the measured curve where it reaches, else the
    (peak, half) fit (see the module doc)."""
    curve = profile.attention_curve
    if flops <= 0:
        return 0.0
    if not curve or flops < curve[0][0]:
        return class_time_s(flops, profile.attention_flops_per_s, profile.attention_half_flops)
    return flops / curve_rate(flops, curve)


class CostModel:
    """Unit-call and copy times on one profile. Cheap to build; `call_times` memoises."""

    __slots__ = ("profile", "overrides", "_gemm", "_conv", "_gemm_fp32",
                 "_conv_fp32", "_hbm", "_launch")

    def __init__(self, profile: HardwareProfile,
                 overrides: Mapping[tuple[str, str], float] | None = None) -> None:
        self.profile = profile
        self.overrides: dict[tuple[str, str], float] = {}
        for key, seconds in (overrides or {}).items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise InputError(f"cost override key must be (component, unit), got {key!r}")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) \
                    or not math.isfinite(seconds) or seconds < 0:
                raise InputError(f"cost override for {key[0]}.{key[1]} must be seconds ≥ 0, "
                                 f"got {seconds!r}")
            self.overrides[key] = float(seconds)
        p = profile
        self._gemm = (p.gemm_flops_per_s, p.gemm_half_flops)
        self._conv = (p.conv_flops_per_s, p.conv_half_flops)
        self._gemm_fp32 = p.gemm_fp32_flops_per_s
        self._conv_fp32 = p.conv_fp32_flops_per_s
        self._hbm = p.hbm_bytes_per_s * p.elementwise_efficiency
        self._launch = p.kernel_launch_s

    def modelled_time_s(self, gemm_flops: float, attention_flops: float, conv_flops: float,
                        memory_bytes: float, op_count: int, gemm_fp32_flops: float = 0,
                        conv_fp32_flops: float = 0) -> float:
        """The formula of the module docstring, without overrides."""
        gpu_s = (class_time_s(gemm_flops, *self._gemm)
                 + attention_time_s(attention_flops, self.profile)
                 + class_time_s(conv_flops, *self._conv)
                 + gemm_fp32_flops / self._gemm_fp32
                 + conv_fp32_flops / self._conv_fp32
                 + memory_bytes / self._hbm)
        return max(gpu_s, op_count * self._launch)

    def call_time_s(self, call: UnitCall) -> float:
        override = self.overrides.get((call.component, call.unit))
        if override is not None:
            return override
        return self.modelled_time_s(call.gemm_flops, call.attention_flops, call.conv_flops,
                                    call.memory_bytes, call.op_count, call.gemm_fp32_flops,
                                    call.conv_fp32_flops)

    def call_times(self, calls: Iterable[UnitCall]) -> list[float]:
        """`call_time_s` of each call, in order. Calls repeat across denoising steps, so
        each distinct (unit, cost drivers) is computed once."""
        memo: dict[tuple[object, ...], float] = {}
        out = []
        for c in calls:
            key = (c.component, c.unit, c.gemm_flops, c.attention_flops, c.conv_flops,
                   c.memory_bytes, c.op_count, c.gemm_fp32_flops, c.conv_fp32_flops)
            seconds = memo.get(key)
            if seconds is None:
                seconds = memo[key] = self.call_time_s(c)
            out.append(seconds)
        return out

    def merge_time_s(self, merge: MergeCall) -> float:
        """Seconds of an adapter merge on the compute stream: its GEMMs and in-place adds,
        by the formula of the module docstring (the factors' copy is the simulator's)."""
        return self.modelled_time_s(merge.gemm_flops, 0, 0, merge.memory_bytes, merge.op_count,
                                    merge.gemm_fp32_flops)

    def transfer_time_s(self, nbytes: int, direction: Direction, pinned: bool = True) -> float:
        return self.profile.transfer_time_s(nbytes, direction, pinned)

    def __repr__(self) -> str:
        return f"CostModel({self.profile.name!r}, overrides={len(self.overrides)})"
