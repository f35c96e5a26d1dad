"""resbench: measure and tune where the weights of a diffusion pipeline live.

`resbench.apply_plan(pipe, plan)` runs your own diffusers pipeline under a plan
(`resbench.engines.apply`); it is imported on first use, with diffusers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "apply_plan"]


def __getattr__(name: str) -> Any:
    if name == "apply_plan":
        from resbench.engines.apply import apply_plan

        return apply_plan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
