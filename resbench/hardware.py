"""Hardware profiles: what one GPU and its host can do, in the units the simulator needs.

A `HardwareProfile` is plain data: capacity, link bandwidths, achieved compute rates and the
overheads that turn a `UnitCall`'s FLOPs and bytes into seconds (`resbench.cost` does that).
Every number records where it came from in `provenance`:

* ``measured`` — measured on such a card (`resbench calibrate`, the probe behind
  `shared/reference/gpu-h100.md`, or this workplace's machine notes);
* ``spec`` — a vendor datasheet, a value the driver or torch reports for that card model
  (total memory, copy engines), or a software constant (allocator rounding);
* ``estimated`` — a datasheet number times an assumed achieved fraction, or carried over
  from a measured card (`resbench/data/hardware/README.md` gives the rules).

Presets are the profile TOMLs in `resbench/data/hardware/` (`schema = 1`); a user's file
(`load_profile`, or `resbench calibrate` on the card itself) has the same layout.
`get_profile` takes a preset name or a path.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tomli_w

from resbench.errors import InputError
from resbench.fileio import atomic_write_text
from resbench.units import format_bytes, parse_bytes

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = 1
PROVENANCE_KINDS = ("measured", "spec", "estimated")
Direction = Literal["h2d", "d2h"]
GiB = 2**30
MiB = 2**20
MAX_ELEMENTWISE_EFFICIENCY = 4.0
"""Sanity bound of `elementwise_efficiency` (counted bytes may exceed the bytes moved)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareProfile:
    """One GPU and its host link. Sizes are int bytes, rates per second, times seconds."""

    name: str
    """Preset name or a user's label (`h100-80g`)."""
    description: str = ""
    """Card variant and host link in words, e.g. "H100 SXM5 80GB HBM3, PCIe Gen5 x16"."""
    memory_capacity_bytes: int
    """Device memory total as torch reports it (`torch.cuda.mem_get_info()[1]`)."""
    usable_fraction: float
    """Share of the capacity one process can really fill (the CUDA context, cuBLAS
    workspaces and other processes take the rest), in (0, 1]."""
    h2d_pinned_bytes_per_s: float
    """Host→device bandwidth of large copies from page-locked host memory."""
    h2d_pageable_bytes_per_s: float
    """Host→device bandwidth from ordinary (pageable) host memory: staged by the driver."""
    d2h_pinned_bytes_per_s: float
    """Device→host bandwidth of large copies into page-locked host memory."""
    d2h_pageable_bytes_per_s: float
    """Device→host bandwidth into pageable host memory."""
    transfer_latency_s: float
    """Fixed cost of one copy, independent of its size."""
    copy_engines: int
    """Asynchronous copy engines the driver reports. Copies in one direction share the
    link, so more engines do not add H2D bandwidth; see `duplex_copies`."""
    duplex_copies: bool
    """Whether an H2D and a D2H copy run at once at (nearly) full speed each."""
    gemm_flops_per_s: float
    """bf16 matmul throughput of large GEMMs (the asymptote of the fit; `resbench
    calibrate` measures it on the DiT blocks' own linear layers)."""
    gemm_half_flops: float
    """FLOPs of one call at which GEMM reaches half of `gemm_flops_per_s`:
    throughput(f) = peak·f/(f + half), i.e. a fixed cost of half/peak seconds per call."""
    attention_flops_per_s: float
    """Scaled-dot-product attention throughput at long sequences (bf16)."""
    attention_half_flops: float
    """FLOPs at which attention reaches half of `attention_flops_per_s`."""
    conv_flops_per_s: float
    """Convolution (conv2d/conv3d, bf16) throughput of large calls."""
    conv_half_flops: float
    """FLOPs at which convolution reaches half of `conv_flops_per_s`."""
    gemm_fp32_flops_per_s: float
    """Matmul throughput with fp32 inputs (TF32 off, PyTorch's default for matmuls: cuBLAS
    runs SIMT FFMA kernels, ~52 TFLOP/s on an H100 against ~730 for bf16)."""
    conv_fp32_flops_per_s: float
    """Effective convolution throughput with fp32 inputs (cuDNN's TF32 convs, on by
    default, with their NCHW<->NHWC layout transposes): conv FLOPs / time."""
    hbm_bytes_per_s: float
    """Device-memory bandwidth of large copies (bytes read plus written per second)."""
    elementwise_efficiency: float
    """Bytes the recorder counts for eager memory-bound kernels (norms, casts, strided and
    broadcasting elementwise ops) per second, as a share of `hbm_bytes_per_s`, in
    (0, `MAX_ELEMENTWISE_EFFICIENCY`]; `resbench.cost` divides their bytes read plus written
    by ``hbm_bytes_per_s × elementwise_efficiency``. Above 1 where the recorder counts a
    fused kernel's decomposition (a norm seen on meta as several ops) and the GPU runs it in
    one pass."""
    kernel_launch_s: float
    """CPU time to dispatch one op from eager PyTorch; it overlaps the GPU's work (see
    `resbench.cost`)."""
    copy_compute_slowdown: float
    """Fractional slowdown of compute while a copy runs (0.01 = 1% slower)."""
    allocator_rounding_bytes: int
    """Block rounding of the CUDA caching allocator for large allocations."""
    fragmentation_fraction: float
    """Share of reserved device memory lost to fragmentation, in [0, 1)."""
    host_ram_bytes: int
    """Host memory of the machine that holds the pinned weights."""
    pinned_alloc_s_per_byte: float
    """Seconds per byte to allocate page-locked host memory (part of start-up)."""
    attention_curve: tuple[tuple[float, float], ...] = ()
    """Measured attention throughput by work per call: (FLOPs of one SDPA call, FLOP/s)
    points, FLOPs ascending, from the pipelines' own shapes (`resbench calibrate`). When
    given, `resbench.cost` interpolates it (log-linear in FLOPs) instead of the
    `attention_flops_per_s` / `attention_half_flops` fit, which stays for calls below the
    first point. Optional: presets leave it empty."""
    conv_workspace_bytes: int = 0
    """Device bytes a bf16/fp16 convolution holds beyond its input, output and weight
    (cuDNN's workspace) at a VAE decoder's shapes (FLUX's), the largest measured; the
    simulator adds it to the working memory of every call with bf16 convolution work.
    Optional (0: none modelled)."""
    conv_fp32_workspace_bytes: int = 0
    """The same for fp32 convolutions (the Wan VAE decoder's conv3d), added to calls with
    fp32 convolution work. Optional."""
    attention_workspace_bytes_per_flop: float = 0.0
    """Device bytes bf16 SDPA holds beyond q, k, v and its output, per attention FLOP, at a
    VAE mid-block's single wide head (FLUX: head dim 512; no flash kernel takes it, so the
    kernel torch falls back to may hold the score matrix); the simulator adds
    ``attention_flops × this`` to calls with attention and bf16 convolution work (a VAE's
    attention block). Optional (0: none modelled)."""
    attention_fp32_workspace_bytes_per_flop: float = 0.0
    """The same for fp32 SDPA (the Wan VAE's mid-block: head dim 384), added to calls with
    attention and fp32 convolution work. Optional."""
    allocator_large_buffer_bytes: int = 0
    """The CUDA caching allocator's segment for requests between 1 and 10 MiB (PyTorch's
    kLargeBuffer, 20 MiB; its small segment is `allocator_rounding_bytes`). When set, the
    simulator models the caching allocator's segments and streams
    (`resbench.devices.allocator`) and decides fit / no-fit on reserved bytes against the
    budget itself, instead of the ledger against the budget less `fragmentation_fraction`.
    Optional (0: not modelled)."""
    library_workspace_bytes: int = 0
    """Device bytes libraries hold through the caching allocator for the whole process, on
    the compute stream: cuBLAS / cuBLASLt's workspace, which torch allocates once per
    (handle, stream) at the first GEMM and keeps (32 MiB on sm90 by default,
    `CUBLAS_WORKSPACE_CONFIG` ":4096:8"). The simulator holds it from the start, in the
    ledger and, when modelled, the allocator. Optional (0: none)."""
    schema: int = SCHEMA
    """Version of the TOML layout."""
    provenance_pairs: tuple[tuple[str, str], ...] = ()
    """(field, "measured" | "spec" | "estimated") pairs; read it through `provenance`."""

    def __post_init__(self) -> None:
        where = f"profile {self.name!r}"
        check_values({f: getattr(self, f) for f in NUMERIC_FIELDS}, where=where)
        object.__setattr__(self, "attention_curve",
                           check_curve(self.attention_curve, where=where))
        check_optional({f: getattr(self, f) for f in OPTIONAL_FIELDS[1:]}, where=where)
        prov = dict(self.provenance_pairs)
        _check_provenance(prov, where=where)
        object.__setattr__(
            self, "provenance_pairs",
            tuple((f, prov[f]) for f in (*NUMERIC_FIELDS, *OPTIONAL_FIELDS) if f in prov)
        )

    @property
    def provenance(self) -> dict[str, str]:
        return dict(self.provenance_pairs)

    @property
    def usable_bytes(self) -> int:
        return int(self.memory_capacity_bytes * self.usable_fraction)

    def bandwidth_bytes_per_s(self, direction: Direction, pinned: bool) -> float:
        if direction == "h2d":
            return self.h2d_pinned_bytes_per_s if pinned else self.h2d_pageable_bytes_per_s
        if direction == "d2h":
            return self.d2h_pinned_bytes_per_s if pinned else self.d2h_pageable_bytes_per_s
        raise InputError(f"transfer direction must be 'h2d' or 'd2h', got {direction!r}")

    def transfer_time_s(self, nbytes: int, direction: Direction, pinned: bool = True) -> float:
        """latency + nbytes / bandwidth; 0 for an empty copy."""
        if nbytes <= 0:
            return 0.0
        return self.transfer_latency_s + nbytes / self.bandwidth_bytes_per_s(direction, pinned)

    def with_capacity(self, capacity_bytes: int) -> HardwareProfile:
        """A copy with another capacity: an emulated smaller card, or the detected total."""
        prov = {**self.provenance, "memory_capacity_bytes": "spec"}
        note = f"capacity set to {format_bytes(capacity_bytes, binary=True)}"
        return replace(
            self,
            memory_capacity_bytes=int(capacity_bytes),
            description=f"{self.description}; {note}" if self.description else note,
            provenance_pairs=tuple(prov.items()),
        )


OPTIONAL_FIELDS: tuple[str, ...] = ("attention_curve", "conv_workspace_bytes",
                                     "conv_fp32_workspace_bytes",
                                     "attention_workspace_bytes_per_flop",
                                     "attention_fp32_workspace_bytes_per_flop",
                                     "allocator_large_buffer_bytes", "library_workspace_bytes")
"""Fields a profile TOML may leave out (their defaults model nothing); written only when set."""
NUMERIC_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(HardwareProfile)
    if f.name not in ("name", "description", "schema", "provenance_pairs", *OPTIONAL_FIELDS)
)
_INT_FIELDS = {"memory_capacity_bytes", "copy_engines", "allocator_rounding_bytes",
               "host_ram_bytes"}
_BOOL_FIELDS = {"duplex_copies"}
# Fields that may be 0; every other number must be > 0.
_MAY_BE_ZERO = {"transfer_latency_s", "kernel_launch_s", "copy_compute_slowdown",
                "fragmentation_fraction", "gemm_half_flops", "attention_half_flops",
                "conv_half_flops", "pinned_alloc_s_per_byte", "allocator_rounding_bytes"}


def check_values(values: dict[str, Any], *, where: str) -> None:
    """Raise `InputError` naming the first field whose value is of the wrong type or range."""
    for name in NUMERIC_FIELDS:
        value = values[name]
        if name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise InputError(f"{where}: {name} must be true or false, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: {name} must be a number, got {value!r}")
        if name in _INT_FIELDS and not isinstance(value, int):
            raise InputError(f"{where}: {name} must be an integer, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"{where}: {name} must be finite, got {value!r}")
        if value < 0 or (value == 0 and name not in _MAY_BE_ZERO):
            bound = "≥ 0" if name in _MAY_BE_ZERO else "> 0"
            raise InputError(f"{where}: {name} must be {bound}, got {value!r}")
    if values["elementwise_efficiency"] > MAX_ELEMENTWISE_EFFICIENCY:
        raise InputError(f"{where}: elementwise_efficiency must be in "
                         f"(0, {MAX_ELEMENTWISE_EFFICIENCY:g}], "
                         f"got {values['elementwise_efficiency']!r}")
    if values["usable_fraction"] > 1:
        raise InputError(f"{where}: usable_fraction must be in (0, 1], "
                         f"got {values['usable_fraction']!r}")
    if values["fragmentation_fraction"] >= 1:
        raise InputError(f"{where}: fragmentation_fraction must be in [0, 1), "
                         f"got {values['fragmentation_fraction']!r}")


def check_curve(curve: Any, *, where: str) -> tuple[tuple[float, float], ...]:
    """`attention_curve` as a tuple of (FLOPs, FLOP/s) pairs, both finite and > 0, FLOPs
    strictly ascending; `InputError` naming the first bad point otherwise."""
    if not isinstance(curve, list | tuple):
        raise InputError(f"{where}: attention_curve must be a list of [FLOPs, FLOP/s] pairs, "
                         f"got {curve!r}")
    out: list[tuple[float, float]] = []
    for i, point in enumerate(curve):
        ok = (isinstance(point, list | tuple) and len(point) == 2
              and all(isinstance(v, int | float) and not isinstance(v, bool)
                      and 0 < v < float("inf") for v in point))
        if not ok or (out and point[0] <= out[-1][0]):
            raise InputError(f"{where}: attention_curve point {i} must be [FLOPs, FLOP/s], "
                             f"both > 0 and finite, FLOPs above the previous point's; "
                             f"got {point!r}")
        out.append((float(point[0]), float(point[1])))
    return tuple(out)


def check_optional(values: dict[str, Any], *, where: str) -> None:
    """The optional scalar fields: numbers ≥ 0 (the `*_workspace_bytes` integers)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 <= value < float("inf"):
            raise InputError(f"{where}: {name} must be a finite number ≥ 0, got {value!r}")
        if name.endswith("_bytes") and not isinstance(value, int):
            raise InputError(f"{where}: {name} must be an integer, got {value!r}")


def _check_provenance(prov: dict[str, str], *, where: str) -> None:
    for name, kind in prov.items():
        if name not in NUMERIC_FIELDS and name not in OPTIONAL_FIELDS:
            raise InputError(f"{where}: provenance names unknown field {name!r}; "
                             f"valid fields: {', '.join((*NUMERIC_FIELDS, *OPTIONAL_FIELDS))}")
        if kind not in PROVENANCE_KINDS:
            raise InputError(f"{where}: provenance of {name} must be one of "
                             f"{', '.join(PROVENANCE_KINDS)}, got {kind!r}")


# ---------------------------------------------------------------------------------- TOML


def profile_dict(profile: HardwareProfile) -> dict[str, Any]:
    """The TOML document of a profile: `schema` first, then fields, then `[provenance]`."""
    doc: dict[str, Any] = {"schema": profile.schema, "name": profile.name,
                           "description": profile.description}
    doc.update({f: getattr(profile, f) for f in NUMERIC_FIELDS})
    if profile.attention_curve:
        doc["attention_curve"] = [list(p) for p in profile.attention_curve]
    doc.update({f: getattr(profile, f) for f in OPTIONAL_FIELDS[1:] if getattr(profile, f)})
    doc["provenance"] = profile.provenance
    return doc


def save_profile(profile: HardwareProfile, path: str | Path) -> Path:
    """Write the profile as TOML in one step: an interrupted write leaves the old file."""
    return atomic_write_text(path, tomli_w.dumps(profile_dict(profile)))


def load_profile(path: str | Path) -> HardwareProfile:
    """Read a profile TOML; every problem is an `InputError` naming the file and the field."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such hardware profile file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: cannot read hardware profile: {exc}") from None
    return profile_from_dict(doc, where=str(path))


def profile_from_dict(doc: dict[str, Any], *, where: str) -> HardwareProfile:
    if "schema" not in doc:
        raise InputError(f"{where}: no `schema` key; this resbench reads hardware profile "
                         f"schema {SCHEMA}")
    if doc["schema"] != SCHEMA:
        raise InputError(f"{where}: hardware profile schema {doc['schema']!r} found; this "
                         f"resbench reads schema {SCHEMA}")
    valid = ("schema", "name", "description", *NUMERIC_FIELDS, *OPTIONAL_FIELDS, "provenance")
    unknown = [k for k in doc if k not in valid]
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r}; valid fields: "
                         f"{', '.join(valid)}")
    missing = [k for k in ("name", *NUMERIC_FIELDS) if k not in doc]
    if missing:
        raise InputError(f"{where}: missing field {missing[0]!r}"
                         + (f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    for key in ("name", "description"):
        if not isinstance(doc.get(key, ""), str):
            raise InputError(f"{where}: {key} must be a string, got {doc[key]!r}")
    values = dict(doc)
    for name in ("memory_capacity_bytes", "allocator_rounding_bytes", "host_ram_bytes"):
        if isinstance(values[name], str):  # sizes may be written as "80GiB" at the edge
            values[name] = parse_bytes(values[name], what=f"{where}: {name}", allow_zero=True)
    check_values(values, where=where)
    if "attention_curve" in values:
        values["attention_curve"] = check_curve(values["attention_curve"], where=where)
    check_optional({f: values[f] for f in OPTIONAL_FIELDS[1:] if f in values}, where=where)
    prov = values.pop("provenance", {})
    if not isinstance(prov, dict):
        raise InputError(f"{where}: provenance must be a table of field = kind")
    _check_provenance(prov, where=where)
    return HardwareProfile(**{k: v for k, v in values.items() if k != "provenance"},
                           provenance_pairs=tuple(prov.items()))


# ----------------------------------------------------------------------- lookup and tables


def _load_presets() -> dict[str, HardwareProfile]:
    # Presets are profile TOMLs shipped in the package; each file's comments say where its
    # numbers come from.
    folder = resources.files("resbench") / "data" / "hardware"
    profiles = [profile_from_dict(tomllib.loads(f.read_text()), where=f"preset {f.name}")
                for f in sorted(folder.iterdir(), key=lambda f: f.name)
                if f.name.endswith(".toml")]
    return {p.name: p for p in profiles}


PRESETS: dict[str, HardwareProfile] = _load_presets()


def get_profile(name_or_path: str | Path) -> HardwareProfile:
    """A preset by name (case-insensitive), or a profile TOML by path."""
    key = str(name_or_path).strip()
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    path = Path(key)
    if path.suffix == ".toml" or path.exists():
        return load_profile(path)
    close = difflib.get_close_matches(key.lower(), list(PRESETS), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InputError(f"unknown hardware profile {key!r}: {hint}presets: "
                     f"{', '.join(PRESETS)} (or a path to a profile .toml)")


def _source(profile: HardwareProfile) -> str:
    prov = profile.provenance
    counts = {k: sum(1 for f in NUMERIC_FIELDS if prov.get(f, "estimated") == k)
              for k in PROVENANCE_KINDS}
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def profiles_frame(profiles: dict[str, HardwareProfile] | None = None) -> pd.DataFrame:
    """One row per preset: memory, usable memory, link and compute rates, provenance count."""
    import pandas as pd

    rows = [{
        "name": p.name,
        "memory_gb": p.memory_capacity_bytes / 1e9,
        "memory_gib": p.memory_capacity_bytes / GiB,
        "usable_gib": p.usable_bytes / GiB,
        "h2d_pinned_gb_per_s": p.h2d_pinned_bytes_per_s / 1e9,
        "gemm_tflop_per_s": p.gemm_flops_per_s / 1e12,
        "hbm_gb_per_s": p.hbm_bytes_per_s / 1e9,
        "source": _source(p),
    } for p in (profiles or PRESETS).values()]
    return pd.DataFrame(rows)


def _unit_and_text(name: str, value: Any) -> tuple[str, str]:
    if name.endswith("_bytes_per_s"):
        return "B/s", f"{value / 1e9:,.2f} GB/s"
    if name.endswith("_flops_per_s"):
        return "FLOP/s", f"{value / 1e12:,.1f} TFLOP/s"
    if name.endswith("_half_flops"):
        return "FLOP", f"{value / 1e9:,.2f} GFLOP"
    if name.endswith("_s_per_byte"):
        return "s/B", f"{value * GiB:,.3f} s/GiB"
    if name.endswith("_bytes"):
        return "B", f"{format_bytes(value, binary=True)} ({format_bytes(value)})"
    if name.endswith("_s"):
        return "s", f"{value * 1e6:,.1f} µs"
    if name.endswith(("_fraction", "_slowdown", "_efficiency")):
        return "fraction", f"{value:.2%}"
    return ("bool", str(value).lower()) if isinstance(value, bool) else ("count", str(value))


def profile_frame(profile: HardwareProfile) -> pd.DataFrame:
    """Every numeric field with its value, unit, a readable form and its provenance."""
    import pandas as pd

    prov = profile.provenance
    rows = []
    for name in NUMERIC_FIELDS:
        value = getattr(profile, name)
        unit, text = _unit_and_text(name, value)
        rows.append({"field": name, "value": value, "unit": unit, "readable": text,
                     "provenance": prov.get(name, "estimated")})
    for name in OPTIONAL_FIELDS[1:]:
        value = getattr(profile, name)
        if value:
            unit, text = (("B", format_bytes(value, binary=True)) if name.endswith("_bytes")
                          else ("B/FLOP", f"{value:.3g} B/FLOP"))
            rows.append({"field": name, "value": value, "unit": unit, "readable": text,
                         "provenance": prov.get(name, "estimated")})
    if profile.attention_curve:
        text = ", ".join(f"{f / 1e9:,.0f} GFLOP: {r / 1e12:,.0f}"
                         for f, r in profile.attention_curve) + " TFLOP/s"
        rows.append({"field": "attention_curve", "value": len(profile.attention_curve),
                     "unit": "points", "readable": text,
                     "provenance": prov.get("attention_curve", "estimated")})
    rows.append({"field": "usable_bytes", "value": profile.usable_bytes, "unit": "B",
                 "readable": _unit_and_text("usable_bytes", profile.usable_bytes)[1],
                 "provenance": "derived"})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ detection

# Substrings of `torch.cuda.get_device_name()` ("NVIDIA H100 80GB HBM3", "NVIDIA GeForce
# RTX 4090") → preset. Variants (H100 PCIe, A100 PCIe) get the nearest preset.
_DEVICE_NAMES = (("H200", "h200-141g"), ("H100", "h100-80g"), ("A100", "a100-80g"),
                 ("L40S", "l40s-48g"), ("RTX 5090", "rtx5090-32g"),
                 ("RTX 4090", "rtx4090-24g"), ("RTX 3090", "rtx3090-24g"))


def match_preset(device_name: str) -> str | None:
    """The preset name for a CUDA device name such as "NVIDIA H100 80GB HBM3", or None."""
    upper = device_name.upper()
    for needle, preset in _DEVICE_NAMES:
        if needle in upper:
            return preset
    return None


def detect_profile() -> HardwareProfile | None:
    """The preset of the current CUDA device with its capacity as the driver reports it;
    None without a GPU or for a card no preset describes."""
    import torch

    if not torch.cuda.is_available():
        return None
    preset = match_preset(torch.cuda.get_device_name())
    if preset is None:
        return None
    _free, total = torch.cuda.mem_get_info()
    detected = PRESETS[preset].with_capacity(total)
    prov = {**detected.provenance, "memory_capacity_bytes": "measured"}
    return replace(detected, provenance_pairs=tuple(prov.items()))
