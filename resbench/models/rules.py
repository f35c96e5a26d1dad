"""Request rules shared by several families (sizes a multiple of N, frames of the form k·n+1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from resbench.errors import InputError

if TYPE_CHECKING:
    from resbench.pipeline import Request


def size_and_frame_rule(
    model: str, *, size_multiple: int, frame_step: int | None = None
) -> Callable[[Request], None]:
    """A `ModelSpec.validate` checking height/width % `size_multiple` and frames = k·step + 1."""

    def validate(request: Request) -> None:
        for name in ("height", "width"):
            value = getattr(request, name)
            if value % size_multiple:
                raise InputError(
                    f"{model}: {name} must be a multiple of {size_multiple}, got {value} "
                    f"(nearest: {max(size_multiple, round(value / size_multiple) * size_multiple)})"
                )
        if frame_step is not None and (request.frames - 1) % frame_step:
            nearest = round((request.frames - 1) / frame_step) * frame_step + 1
            raise InputError(
                f"{model}: frames must be {frame_step}·k+1 (e.g. {nearest}), got {request.frames}"
            )

    return validate
