"""Microbenchmarks that measure a `HardwareProfile` on the CUDA card in this machine.

Timing rules (as gpt-fast's `bench.py`): warm-up runs are excluded, device work is timed
with CUDA events on the stream that runs it (or a host clock between two
`torch.cuda.synchronize()` calls where two streams run at once), every quantity keeps at
least five samples, and results carry the median, the spread and the raw samples.

`calibrate` runs everything, writes the profile TOML (measured fields marked
``measured``) and the raw samples as JSON beside it.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from resbench.errors import InputError
from resbench.hardware import HardwareProfile, detect_profile, get_profile, save_profile

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True, slots=True)
class Measurement:
    """Samples (seconds) of one quantity at one size; `work` is bytes or FLOPs per sample."""

    quantity: str
    size: int
    work: float
    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples."""
        return (max(self.samples_s) - min(self.samples_s)) / self.median_s

    @property
    def rate(self) -> float:
        return self.work / self.median_s

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "median_s": self.median_s, "spread": self.spread,
                "rate_per_s": self.rate}


def _require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise InputError("calibrate needs a CUDA GPU; none found (torch.cuda.is_available() "
                         "is False): run it on the card you want to profile")
    return torch


def _time_events(fn: Callable[[], object], *, samples: int, warmup: int = 2,
                 inner: int = 1) -> tuple[float, ...]:
    """Per-call seconds of `fn` on the current stream; `inner` calls per sample."""
    torch = _require_cuda()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3 / inner)
    return tuple(out)


def _time_graph(fn: Callable[[], object], *, samples: int, inner: int) -> tuple[float, ...]:
    """Per-call seconds of `fn` replayed `inner` times from a CUDA graph.

    Eager PyTorch spends ~10 us of CPU per op, so small kernels timed eagerly measure the
    CPU; a graph replay measures the GPU's own per-kernel cost (`kernel_launch_s` is
    measured separately).
    """
    torch = _require_cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph asks
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    return tuple(t / inner for t in _time_events(graph.replay, samples=samples))


def _time_wall(fn: Callable[[], object], *, samples: int, warmup: int = 1) -> tuple[float, ...]:
    """Host-clock seconds of `fn` between synchronizes (for work spread over streams)."""
    torch = _require_cuda()
    for _ in range(warmup):
        fn()
        torch.cuda.synchronize()
    out = []
    for _ in range(samples):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return tuple(out)


def fit_peak_half(points: list[Measurement]) -> tuple[float, float]:
    """Fit t(f) = (f + half) / peak, i.e. throughput = peak·f/(f + half), by least squares
    on relative error; returns (peak FLOP/s, half FLOPs)."""
    import numpy as np

    f = np.array([p.work for p in points], dtype=float)
    t = np.array([p.median_s for p in points], dtype=float)
    design = np.stack([f, np.ones_like(f)], axis=1) / t[:, None]
    (a, b), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if a <= 0:  # degenerate fit: the best observed rate, no fixed cost
        return float(max(p.rate for p in points)), 0.0
    return float(1 / a), float(max(b, 0.0) / a)


# --------------------------------------------------------------------------- transfers


def calibrate_transfers(*, quick: bool = False, samples: int = 5) -> dict[str, Any]:
    """Copy bandwidths (pinned/pageable, both directions), latency, duplex, overlap, pinning.

    Pinned rates are the best of a size sweep on one buffer; pageable rates stream 700 MB
    copies out of a fresh multi-GB buffer (`_pageable_stream`), as offloaded weights move.

    Returns ``{"fields": {profile field: value}, "measurements": [Measurement, ...]}``.
    """
    torch = _require_cuda()
    sizes = [MiB * 4**i for i in range(5 if quick else 6)]  # 1 MiB .. 256 MiB or 1 GiB
    big = sizes[-1]
    dev = torch.empty(big, dtype=torch.uint8, device="cuda")
    pinned = torch.empty(big, dtype=torch.uint8, pin_memory=True)
    pageable = torch.ones(big, dtype=torch.uint8)  # touched: no first-touch faults timed
    copies: dict[str, Callable[[int], object]] = {
        "h2d_pinned": lambda n: dev[:n].copy_(pinned[:n], non_blocking=True),
        "h2d_pageable": lambda n: dev[:n].copy_(pageable[:n]),
        "d2h_pinned": lambda n: pinned[:n].copy_(dev[:n], non_blocking=True),
        "d2h_pageable": lambda n: pageable[:n].copy_(dev[:n]),
    }
    ms: list[Measurement] = []
    fields: dict[str, Any] = {}
    for name, copy in copies.items():
        points = [Measurement(name, n, n, _time_events(partial(copy, n), samples=samples))
                  for n in sizes]
        ms += points
        fields[f"{name}_bytes_per_s"] = max(p.rate for p in points[-2:])
    # Pageable copies of one warm buffer flatter the link (8.5 GB/s H2D on the H100 machine
    # against 4.7 streaming offloaded weights): the profile takes the streamed rates.
    for name, direction in (("h2d_pageable", "h2d"), ("d2h_pageable", "d2h")):
        stream = _pageable_stream(torch, direction, quick=quick)
        ms.append(stream)
        fields[f"{name}_bytes_per_s"] = stream.rate
    small = Measurement("h2d_pinned_4KiB", 4096, 4096, _time_events(
        lambda: dev[:4096].copy_(pinned[:4096], non_blocking=True), samples=samples, inner=20))
    ms.append(small)
    fields["transfer_latency_s"] = max(
        small.median_s - 4096 / fields["h2d_pinned_bytes_per_s"], 0.0)

    # Duplex: an H2D and a D2H of `big` bytes on two streams at once.
    dev2 = torch.empty(big, dtype=torch.uint8, device="cuda")
    pinned2 = torch.empty(big, dtype=torch.uint8, pin_memory=True)
    up, down = torch.cuda.Stream(), torch.cuda.Stream()

    def both() -> None:
        with torch.cuda.stream(up):
            dev.copy_(pinned, non_blocking=True)
        with torch.cuda.stream(down):
            pinned2.copy_(dev2, non_blocking=True)

    duplex = Measurement("duplex_h2d_d2h", big, 2 * big, _time_wall(both, samples=samples))
    ms.append(duplex)
    serial_s = big / fields["h2d_pinned_bytes_per_s"] + big / fields["d2h_pinned_bytes_per_s"]
    fields["duplex_copies"] = bool(duplex.median_s < 0.75 * serial_s)

    # Overlap: matmuls on the compute stream, alone and while an H2D runs on `up`. The
    # matmuls take ~60% of the copy's time so that all of them run beside it.
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    one = _time_events(lambda: torch.mm(a, b, out=c), samples=samples)
    reps = max(1, int(0.6 * big / fields["h2d_pinned_bytes_per_s"] / statistics.median(one)))

    def matmuls() -> None:
        for _ in range(reps):
            torch.mm(a, b, out=c)

    alone_s, during_s = [], []
    for i in range(samples + 1):  # alone and beside a copy in turn, so clock drift hits both
        alone_i = _time_events(matmuls, samples=1, warmup=0)[0]
        torch.cuda.synchronize()
        with torch.cuda.stream(up):
            dev.copy_(pinned, non_blocking=True)
        # Recorded on the compute stream after the copy was issued: these events time the
        # matmuls while the copy runs beside them.
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        matmuls()
        end.record()
        torch.cuda.synchronize()
        if i:  # round 0 is warm-up
            alone_s.append(alone_i)
            during_s.append(start.elapsed_time(end) / 1e3)
    alone = Measurement("matmul_alone", n, 2 * n**3 * reps, tuple(alone_s))
    during = Measurement("matmul_during_h2d", n, 2 * n**3 * reps, tuple(during_s))
    ms += [alone, during]
    fields["copy_compute_slowdown"] = max(during.median_s / alone.median_s - 1.0, 0.0)

    pin = Measurement("pinned_alloc", big, big,
                      tuple(_pin_seconds(torch, big) for _ in range(samples)))
    ms.append(pin)
    fields["pinned_alloc_s_per_byte"] = pin.median_s / big
    return {"fields": fields, "measurements": ms}


PAGEABLE_CHUNK = 700 * 10**6
"""Bytes per copy when streaming pageable memory: about one Wan2.2 DiT block's weights."""


def _pageable_stream(torch: Any, direction: str, *, quick: bool = False) -> Measurement:
    """Pageable copies as offloading streams them: `PAGEABLE_CHUNK` bytes at a time out of a
    fresh multi-GB host buffer (each chunk copied once, so no sample reuses warm pages), one
    sample per chunk.

    The set is 2 GiB quick, else 8 GiB, at most an eighth of host RAM.
    """
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    total = min(2 * GiB if quick else 8 * GiB, ram // 8)
    chunk = min(PAGEABLE_CHUNK, total // 6)  # ≥ 5 timed chunks
    host = torch.ones(total, dtype=torch.uint8)  # touched: first-touch faults are not timed
    dev = torch.empty(chunk, dtype=torch.uint8, device="cuda")
    out = []
    for i in range(total // chunk):
        part = host[i * chunk:(i + 1) * chunk]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if direction == "h2d":
            dev.copy_(part)
        else:
            part.copy_(dev)
        torch.cuda.synchronize()
        if i:  # the first chunk warms the driver's staging buffers
            out.append(time.perf_counter() - t0)
    del host, dev
    return Measurement(f"{direction}_pageable_stream", chunk, chunk, tuple(out))


def _pin_seconds(torch: Any, nbytes: int) -> float:
    """Seconds to page-lock `nbytes` of fresh host memory (what a pinned slab costs).

    cudaHostRegister on an untouched buffer rather than `torch.empty(pin_memory=True)`:
    torch's caching host allocator would hand back the previous sample's block for free.
    """
    cudart = torch.cuda.cudart()
    buf = torch.empty(nbytes, dtype=torch.uint8)
    t0 = time.perf_counter()
    torch.cuda.check_error(cudart.cudaHostRegister(buf.data_ptr(), nbytes, 0))
    seconds = time.perf_counter() - t0
    torch.cuda.check_error(cudart.cudaHostUnregister(buf.data_ptr()))
    return seconds


# ----------------------------------------------------------------------------- compute


def calibrate_compute(*, quick: bool = False, samples: int = 5) -> dict[str, Any]:
    """GEMM, attention and conv throughput fits (bf16), the fp32 GEMM rate, HBM bandwidth,
    kernel launch cost."""
    torch = _require_cuda()
    import torch.nn.functional as F

    bf16 = torch.bfloat16
    fields: dict[str, Any] = {}

    gemm = []
    for n in [256, 512, 1024, 2048, 4096] + ([] if quick else [8192]):
        a, b = (torch.randn(n, n, device="cuda", dtype=bf16) for _ in range(2))
        gemm.append(Measurement("gemm", n, 2 * n**3, _time_graph(
            partial(torch.matmul, a, b), samples=samples, inner=max(2, 2**30 // n**3))))
    fields["gemm_flops_per_s"], fields["gemm_half_flops"] = fit_peak_half(gemm)

    # fp32 inputs with the process's TF32 setting left as is (PyTorch's default: off for
    # matmuls, so cuBLAS runs SIMT FFMA kernels): the rate of large calls, no fixed cost.
    gemm32 = []
    for n in [2048, 4096] + ([] if quick else [8192]):
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.float32) for _ in range(2))
        gemm32.append(Measurement("gemm_fp32", n, 2 * n**3, _time_graph(
            partial(torch.matmul, a, b), samples=samples, inner=2)))
    fields["gemm_fp32_flops_per_s"] = max(p.rate for p in gemm32)

    attn = []
    heads, dim = 40, 128  # a Wan2.x DiT's attention
    for seq in [512, 1024, 2048, 4096, 8192] + ([] if quick else [16384, 32768, 65536]):
        # [B, L, H, D] seen as [B, H, L, D]: the strided views `models.layers.attention`
        # passes to SDPA, so the kernels chosen are the zoo's.
        q, k, v = (torch.randn(1, seq, heads, dim, device="cuda", dtype=bf16).transpose(1, 2)
                   for _ in range(3))
        attn.append(Measurement("attention", seq, 4 * heads * seq**2 * dim, _time_graph(
            partial(F.scaled_dot_product_attention, q, k, v),
            samples=samples, inner=max(2, 2**14 // seq))))
    fields["attention_flops_per_s"], fields["attention_half_flops"] = fit_peak_half(attn)

    conv = []
    frames = 8
    for ch, side in [(96, 32), (192, 32), (384, 32), (384, 64)] + ([] if quick else [(512, 64)]):
        x = torch.randn(1, ch, frames, side, side, device="cuda", dtype=bf16)
        w = torch.randn(ch, ch, 3, 3, 3, device="cuda", dtype=bf16)
        flops = 2 * ch * ch * 27 * frames * side * side
        conv.append(Measurement("conv3d", ch * side, flops, _time_graph(
            partial(F.conv3d, x, w, padding=1), samples=samples,
            inner=max(2, int(4e10 // flops)))))
    fields["conv_flops_per_s"], fields["conv_half_flops"] = fit_peak_half(conv)

    # fp32 convs (the Wan VAEs) are measured at the decoder's own shapes:
    # `resbench.calibrate_shapes.calibrate_decoder`.

    hbm = []
    for n in [64 * MiB, 256 * MiB] + ([] if quick else [GiB]):
        src = torch.empty(n // 2, device="cuda", dtype=bf16).normal_()
        dst = torch.empty_like(src)
        # Bytes read plus bytes written, as `UnitCall.memory_bytes` counts them. Eager
        # memory-bound kernels reach only part of this: `elementwise_efficiency`, measured
        # on the blocks' own kernel mix (`calibrate_shapes.calibrate_elementwise`).
        hbm.append(Measurement("hbm_copy", n, 2 * n, _time_events(
            partial(dst.copy_, src), samples=samples)))
    fields["hbm_bytes_per_s"] = max(p.rate for p in hbm)

    tiny = torch.zeros(1, device="cuda")
    count = 1000
    launch = Measurement("kernel_launch", 1, count, _time_wall(
        lambda: [tiny.add_(1.0) for _ in range(count)], samples=samples))
    fields["kernel_launch_s"] = launch.median_s / count
    return {"fields": fields,
            "measurements": gemm + gemm32 + attn + conv + hbm + [launch]}


# ------------------------------------------------------------------------------ device


def _async_engine_count() -> int | None:
    """cuDeviceGetAttribute(CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT = 40); None if unread."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, count = ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(device), 0):
        return None
    if cuda.cuDeviceGetAttribute(ctypes.byref(count), 40, device):
        return None
    return count.value


def calibrate_device() -> dict[str, Any]:
    """Capacity, the share usable after context and cuBLAS start-up, copy engines, host RAM."""
    torch = _require_cuda()
    a = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()  # creates the cuBLAS handle and workspace, as any real run does
    del a
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    fields: dict[str, Any] = {
        "memory_capacity_bytes": int(total),
        "usable_fraction": (free + torch.cuda.memory_reserved()) / total,
        "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    engines = _async_engine_count()
    if engines:
        fields["copy_engines"] = engines
    return {"fields": fields, "device_name": torch.cuda.get_device_name(),
            "torch": torch.__version__}


def calibrate(out_path: str | Path, *, base_profile: HardwareProfile | str | None = None,
              quick: bool = False) -> HardwareProfile:
    """Measure this card; write `out_path` (profile TOML) and `<stem>.samples.json`.

    Fields not measured here (allocator rounding, fragmentation, and any the driver would
    not report) keep `base_profile`'s values and provenance; the fields measured at the
    pipelines' own shapes come from `resbench.calibrate_shapes`; the default base is the preset
    matching this card, else `h100-80g`.
    """
    _require_cuda()
    if isinstance(base_profile, str):
        base_profile = get_profile(base_profile)
    base = base_profile or detect_profile() or get_profile("h100-80g")
    from resbench.calibrate_shapes import (
        calibrate_attention_curve,
        calibrate_decoder,
        calibrate_elementwise,
        calibrate_gemm_shapes,
    )

    device = calibrate_device()
    transfers = calibrate_transfers(quick=quick)
    compute = calibrate_compute(quick=quick)
    shaped = [calibrate_gemm_shapes(quick=quick), calibrate_attention_curve(quick=quick),
              calibrate_elementwise(compute["fields"]["hbm_bytes_per_s"]),
              calibrate_decoder(quick=quick)]
    measured = {**device["fields"], **transfers["fields"], **compute["fields"],
                **{k: v for part in shaped for k, v in part["fields"].items()}}
    prov = {**base.provenance, **dict.fromkeys(measured, "measured")}
    stamp = time.strftime("%Y-%m-%d")
    profile = replace(
        base, **measured,
        name=f"{base.name}-calibrated",
        description=f"{device['device_name']}, calibrated {stamp} with torch "
                    f"{device['torch']}{' (quick)' if quick else ''}; fields not measured "
                    f"come from {base.name}",
        provenance_pairs=tuple(prov.items()),
    )
    out_path = Path(out_path)
    save_profile(profile, out_path)
    raw = {"device": device, "quick": quick, "date": stamp,
           "workspace_bytes": shaped[-1]["workspace_bytes"],
           "measurements": [m.record() for m in
                            transfers["measurements"] + compute["measurements"]
                            + [m for part in shaped for m in part["measurements"]]]}
    out_path.with_suffix(".samples.json").write_text(json.dumps(raw, indent=2))
    return profile
