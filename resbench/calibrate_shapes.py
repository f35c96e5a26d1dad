"""Microbenchmarks at the pipelines' own shapes, for `resbench calibrate` (issue 14).

Square GEMMs, one attention sweep and a 64×64 conv say too little about a pipeline on a
card the simulator was never fitted to. These measure, still with microbenchmarks only (no
pipeline run, nothing fitted to one):

* `gemm_flops_per_s`: the bf16 rate of the DiT blocks' own linear layers (bias included) at
  the pipelines' token counts, each shape weighted by how often a block runs it (the square
  GEMM sweep of `calibrate_compute` keeps the per-call fixed cost, `gemm_half_flops`);
* `attention_curve`: SDPA throughput at the sequence lengths and head counts Wan2.2 (40
  heads × 128, 480×832 at 17, 33 and 81 frames: 7,800, 14,040, 32,760 tokens) and FLUX.1
  (24 × 128, 1024² with its 512 text tokens: 4,608) run, plus shorter Wan sequences;
* `elementwise_efficiency`: the bytes the recorder counts for the memory-bound ops of real
  blocks (`resbench.kernel_mix`) over their GPU time, as a share of `hbm_bytes_per_s`;
* `conv_fp32_flops_per_s`: fp32 conv3d at the Wan VAE decoder's shapes (one latent frame at
  a time with its two causal cache frames, 60×104 up to 480×832), weighted by how many of
  each a decoder pass runs;
* `conv_workspace_bytes` / `conv_fp32_workspace_bytes`: the most device memory a decoder
  conv (FLUX bf16 conv2d / Wan fp32 conv3d) holds beyond its input, output and weight, read
  from the caching allocator's peak;
* `attention_workspace_bytes_per_flop` / `attention_fp32_workspace_bytes_per_flop`: the same
  for SDPA with one wide head (the VAEs' mid-block attention: head dim 512 in bf16 for FLUX
  at 1024², 384 in fp32 for Wan at 480×832), per attention FLOP.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from resbench.calibrate import Measurement, _require_cuda, _time_events, _time_graph
from resbench.errors import InputError
from resbench.hardware import MAX_ELEMENTWISE_EFFICIENCY, HardwareProfile

# (block, tokens M, in K, out N, linears of this shape per block): the DiTs' linear layers.
GEMM_SHAPES: tuple[tuple[str, int, int, int, int], ...] = (
    ("wan-7800", 7800, 5120, 5120, 6), ("wan-7800", 512, 5120, 5120, 2),
    ("wan-7800", 7800, 5120, 13824, 1), ("wan-7800", 7800, 13824, 5120, 1),
    ("wan-17160", 17160, 5120, 5120, 6), ("wan-17160", 512, 5120, 5120, 2),
    ("wan-17160", 17160, 5120, 13824, 1), ("wan-17160", 17160, 13824, 5120, 1),
    ("flux-double", 4096, 3072, 3072, 4), ("flux-double", 512, 3072, 3072, 4),
    ("flux-double", 4096, 3072, 12288, 1), ("flux-double", 4096, 12288, 3072, 1),
    ("flux-double", 512, 3072, 12288, 1), ("flux-double", 512, 12288, 3072, 1),
    ("flux-single", 4608, 3072, 3072, 3), ("flux-single", 4608, 3072, 12288, 1),
    ("flux-single", 4608, 15360, 3072, 1),
)
# (label, heads, head dim, sequence length): self-attention of the pipelines' DiTs.
ATTENTION_SHAPES: tuple[tuple[str, int, int, int], ...] = (
    ("wan", 40, 128, 1024), ("wan", 40, 128, 2048), ("flux", 24, 128, 4608),
    ("wan", 40, 128, 4096), ("wan", 40, 128, 7800), ("wan", 40, 128, 14040),
    ("wan", 40, 128, 32760),
)

# Wan VAE decoder conv3d (fp32, kernel 3): (channels in, channels out, frames out, height,
# width, convs of this shape per latent frame decoded).
WAN_DECODER_CONVS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (384, 384, 1, 60, 104, 10), (384, 384, 2, 120, 208, 6),
    (192, 192, 4, 240, 416, 6), (96, 96, 4, 480, 832, 6),
)
# FLUX VAE decoder conv2d (bf16, kernel 3) at 1024²: (channels in, channels out, side).
FLUX_DECODER_CONVS: tuple[tuple[int, int, int], ...] = (
    (512, 512, 256), (512, 512, 512), (256, 256, 1024), (128, 128, 1024),
)
# VAE mid-block attention: (label, head dim, tokens, dtype name).
WIDE_ATTENTION: tuple[tuple[str, int, int, str], ...] = (
    ("flux-vae-mid", 512, 128 * 128, "bfloat16"), ("wan-vae-mid", 384, 60 * 104, "float32"),
)


def _attention_flops(heads: int, dim: int, seq_q: int, seq_k: int) -> int:
    return 4 * heads * seq_q * seq_k * dim


def calibrate_gemm_shapes(*, quick: bool = False, samples: int = 5,
                          device: str = "cuda") -> dict[str, Any]:
    """`gemm_flops_per_s`: Σ count·FLOPs / Σ count·seconds of bf16 `F.linear` (with bias)
    at the DiT blocks' shapes (`GEMM_SHAPES`; quick: Wan at 7,800 tokens only)."""
    torch = _require_cuda()
    import torch.nn.functional as F

    ms = []
    flops_total = seconds_total = 0.0
    for block, m, k, n, count in GEMM_SHAPES[:4] if quick else GEMM_SHAPES:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, device=device, dtype=torch.bfloat16)
        flops = 2 * m * k * n
        meas = Measurement(f"linear_{block}_{m}x{k}x{n}", m, flops, _time_graph(
            lambda x=x, w=w, b=b: F.linear(x, w, b), samples=samples,
            inner=max(2, int(2e11 // flops))))
        ms.append(meas)
        flops_total += count * flops
        seconds_total += count * meas.median_s
        del x, w, b
    return {"fields": {"gemm_flops_per_s": flops_total / seconds_total}, "measurements": ms}


def calibrate_attention_curve(*, quick: bool = False, samples: int = 5,
                              device: str = "cuda") -> dict[str, Any]:
    """(FLOPs per call, FLOP/s) points of bf16 SDPA at the DiTs' shapes, FLOPs ascending."""
    torch = _require_cuda()
    import torch.nn.functional as F

    ms = []
    for label, heads, dim, seq in ATTENTION_SHAPES[:5] if quick else ATTENTION_SHAPES:
        # [B, L, H, D] seen as [B, H, L, D], as diffusers' attention dispatch passes them
        q, k, v = (torch.randn(1, seq, heads, dim, device=device, dtype=torch.bfloat16)
                   .transpose(1, 2) for _ in range(3))
        flops = _attention_flops(heads, dim, seq, seq)
        ms.append(Measurement(f"attention_{label}_{heads}x{dim}", seq, flops, _time_graph(
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), samples=samples,
            inner=max(2, int(2e12 // flops)))))
        del q, k, v
    points = sorted((m.work, m.rate) for m in ms)
    curve = []
    for f, r in points:  # equal FLOPs at two shapes: one point, their mean rate
        if curve and f <= curve[-1][0]:
            curve[-1] = (curve[-1][0], (curve[-1][1] + r) / 2)
        else:
            curve.append((f, r))
    return {"fields": {"attention_curve": tuple(curve)}, "measurements": ms}


def calibrate_elementwise(hbm_bytes_per_s: float, *, samples: int = 5, device: str = "cuda",
                          scale: float = 1.0) -> dict[str, Any]:
    """`elementwise_efficiency`: Σ counted bytes / Σ GPU seconds of the kernel mixes, over
    `hbm_bytes_per_s` (above 1 where the recorder counts more bytes than the kernels move;
    bounded by `MAX_ELEMENTWISE_EFFICIENCY`). `scale` shrinks the mixes (tests)."""
    torch = _require_cuda()
    from resbench import kernel_mix

    ms = []
    for mix in kernel_mix.MIXES:
        args = mix.inputs(device, scale)
        # GPU time alone, from a graph: the cost model takes the larger of it and dispatch
        seconds = _time_graph(lambda mix=mix, args=args: kernel_mix.run(mix, args),
                              samples=samples, inner=2)
        ms.append(Measurement(f"elementwise_{mix.name}", 0,
                              kernel_mix.counted_bytes(mix, scale), seconds))
        del args
        _empty_cache(torch)
    rate = sum(m.work for m in ms) / sum(m.median_s for m in ms)
    return {"fields": {"elementwise_efficiency": min(MAX_ELEMENTWISE_EFFICIENCY,
                                                     rate / hbm_bytes_per_s)},
            "measurements": ms}


def _empty_cache(torch: Any) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _extra_bytes(torch: Any, fn: Any, out_bytes: int) -> int:
    """Peak allocated bytes of one call of `fn` beyond what was allocated before it and its
    output (the kernel's workspace and temporaries), after a warm-up call."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before - out_bytes
    del out
    return max(0, int(extra))


def workspace_fields(workspace_bytes: dict[str, int]) -> dict[str, Any]:
    """The profile's workspace fields from the per-shape bytes `calibrate_decoder` measured
    (``workspace_bytes`` of the samples JSON): per precision, the largest conv workspace
    and the largest wide-attention workspace per FLOP."""
    def largest(prefix: str) -> int:
        return max((v for k, v in workspace_bytes.items() if k.startswith(prefix)), default=0)

    per_flop = {"bfloat16": 0.0, "float32": 0.0}
    for label, dim, seq, dtype in WIDE_ATTENTION:
        extra = workspace_bytes.get(f"attention_{label}_{dtype}")
        if extra is not None:
            per_flop[dtype] = max(per_flop[dtype], extra / _attention_flops(1, dim, seq, seq))
    return {"conv_workspace_bytes": largest("conv2d_bf16"),
            "conv_fp32_workspace_bytes": largest("conv3d_fp32"),
            "attention_workspace_bytes_per_flop": per_flop["bfloat16"],
            "attention_fp32_workspace_bytes_per_flop": per_flop["float32"]}


def with_workspace_fields(profile: HardwareProfile, samples_path: str | Path) -> HardwareProfile:
    """`profile` with its workspace fields (re)derived by `workspace_fields` from the
    ``workspace_bytes`` its calibration wrote to `samples_path` (a profile calibrated before
    the fields were split by precision), marked measured."""
    import json

    raw = json.loads(Path(samples_path).read_text())
    if "workspace_bytes" not in raw:
        raise InputError(f"{samples_path}: no workspace_bytes (calibrated before resbench "
                         f"measured decoder workspaces); run `resbench calibrate` again")
    derived = workspace_fields(raw["workspace_bytes"])
    prov = {**profile.provenance, **dict.fromkeys(derived, "measured")}
    return replace(profile, **derived, provenance_pairs=tuple(prov.items()))


def calibrate_decoder(*, quick: bool = False, samples: int = 5,
                      device: str = "cuda") -> dict[str, Any]:
    """fp32 conv3d rate at the Wan decoder's shapes; the conv and wide-attention workspaces
    (``workspace_bytes``: bytes beyond input, output and weight, per shape)."""
    torch = _require_cuda()
    import torch.nn.functional as F

    ms: list[Measurement] = []
    workspaces: dict[str, int] = {}
    flops_total = seconds_total = 0.0
    for cin, cout, frames, h, w, count in WAN_DECODER_CONVS[:2] if quick else WAN_DECODER_CONVS:
        # CausalConv3d: two cache frames in front, spatial padding done before the conv
        x = torch.randn(1, cin, frames + 2, h + 2, w + 2, device=device, dtype=torch.float32)
        wt = torch.randn(cout, cin, 3, 3, 3, device=device, dtype=torch.float32)
        flops = 2 * cin * cout * 27 * frames * h * w
        m = Measurement(f"conv3d_fp32_wan_decoder_{cin}x{h}x{w}x{frames}", cin * h * w, flops,
                        _time_events(lambda x=x, wt=wt: F.conv3d(x, wt), samples=samples))
        ms.append(m)
        flops_total += count * flops
        seconds_total += count * m.median_s
        out_bytes = cout * frames * h * w * 4
        extra = _extra_bytes(torch, lambda x=x, wt=wt: F.conv3d(x, wt), out_bytes)
        workspaces[f"conv3d_fp32_{cin}x{h}x{w}x{frames}"] = extra
        del x, wt
        _empty_cache(torch)
    for cin, cout, side in FLUX_DECODER_CONVS[:2] if quick else FLUX_DECODER_CONVS:
        x = torch.randn(1, cin, side, side, device=device, dtype=torch.bfloat16)
        wt = torch.randn(cout, cin, 3, 3, device=device, dtype=torch.bfloat16)
        extra = _extra_bytes(torch, lambda x=x, wt=wt: F.conv2d(x, wt, padding=1),
                             cout * side * side * 2)
        workspaces[f"conv2d_bf16_{cin}x{side}x{side}"] = extra
        del x, wt
        _empty_cache(torch)
    for label, dim, seq, dtype in WIDE_ATTENTION:
        q, k, v = (torch.randn(1, 1, seq, dim, device=device, dtype=getattr(torch, dtype))
                   for _ in range(3))
        flops = _attention_flops(1, dim, seq, seq)
        extra = _extra_bytes(torch, lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
                             q.numel() * q.element_size())
        times = _time_events(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
                             samples=samples)
        ms.append(Measurement(f"attention_{label}_{dtype}", seq, flops, times))
        workspaces[f"attention_{label}_{dtype}"] = extra
        del q, k, v
        _empty_cache(torch)
    fields = {"conv_fp32_flops_per_s": flops_total / seconds_total,
              **workspace_fields(workspaces)}
    return {"fields": fields, "measurements": ms, "workspace_bytes": workspaces}
