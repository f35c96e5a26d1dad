"""Checks a command makes before any long work: a bad output path, a request too large to
record, or a plan that does not match the model fails in a second, not after the run."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from resbench.errors import InputError
from resbench.fileio import check_output_dir, check_output_file
from resbench.units import format_bytes

MAX_LATENT_BYTES = 2**30
"""Recording a schedule makes the request's latents for real (float32, in host RAM). The
zoo's default requests need 1 to 30 MB (HunyuanVideo 720x1280x129 the most), so 1 GiB is
far past any real request and well below what would exhaust a machine's RAM."""


def device(name: str, *, note: Callable[[str], Any]) -> str:
    """`auto` resolved (the GPU if there is one, else `sim`); `cuda` without a GPU refused."""
    import torch

    has_gpu = torch.cuda.is_available()
    if name == "auto":
        if not has_gpu:
            note("no GPU found: using the simulator (--device sim)")
        return "cuda" if has_gpu else "sim"
    if name == "cuda" and not has_gpu:
        raise InputError("--device cuda: no CUDA GPU here (torch.cuda.is_available() is "
                         "False); use --device sim (the simulator) or --device cpu")
    return name


def outputs(**paths: str | Path | None) -> None:
    """`check_output_file` for each given path, named by its option (`report=...` → --report)."""
    for option, path in paths.items():
        if path is not None:
            check_output_file(path, what=f"--{option.replace('_', '-')}")


def folders(**folders: str | Path | None) -> None:
    """`check_output_dir` for the folders where default output files will go."""
    for option, folder in folders.items():
        if folder is not None:
            check_output_dir(folder, what=f"--{option.replace('_', '-')} (default folder)")


def request_size(model: str, overrides: Mapping[str, Any]) -> None:
    """Refuse a request whose latent tensor alone would exceed `MAX_LATENT_BYTES`."""
    from resbench.models.registry import get_model
    from resbench.pipeline import Request, latent_shape

    spec = get_model(model)
    request = Request.for_model(spec, **overrides)
    nbytes = 4 * math.prod(latent_shape(spec, request))
    if nbytes > MAX_LATENT_BYTES:
        d = spec.defaults
        raise InputError(
            f"request {request.height}x{request.width}x{request.frames} (batch "
            f"{request.batch}) is too large: its latents alone take {format_bytes(nbytes)}, "
            f"above the {format_bytes(MAX_LATENT_BYTES, binary=True)} resbench records; "
            f"{spec.name}'s default is {d.height}x{d.width}x{d.frames}")


def plan_matches_model(plan_name: str | None, model: str, *, scale: float) -> None:
    """The plan names only the model's components and keeps at most as many blocks resident
    as each component has at `scale` (counted on the meta device, only where asked)."""
    from resbench.models.base import build_component, unit_infos
    from resbench.models.registry import get_model
    from resbench.resources import DEFAULT_PLAN, resolve_plan

    spec = get_model(model)
    plan = resolve_plan(plan_name)
    kinds = {c.name: c.kind for c in spec.components}
    blocks = {
        c.name: sum(u.block_index >= 0 for u in unit_infos(c.name, build_component(c, scale)))
        for c in spec.components
        if getattr(plan.config_for(c.name, c.kind), "resident_blocks", 0) > 0
    }
    plan.check_components(kinds, source=plan_name or DEFAULT_PLAN, blocks=blocks)
