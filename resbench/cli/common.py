"""Options shared by several commands, the size parameter type and the output emitter."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click
import pandas as pd
from rich.console import Console
from rich.table import Table

from resbench.errors import InputError
from resbench.fileio import dumps_json
from resbench.units import parse_bytes

stderr = Console(stderr=True)


class SizeType(click.ParamType):
    """`48GB` (SI) / `48GiB` (IEC) → int bytes; bad text is a usage error (exit 2)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value, what=param.name if param and param.name else "size")
        except InputError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout instead of tables.")(f)


def model_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--model", "-m", default="wan2.2", show_default=True,
                        help="Model name or alias (see `resbench models`).")(f)


def engine_option(f: Callable[..., Any]) -> Callable[..., Any]:
    # The names are spelled here rather than read from `resbench.engines.base.ENGINES`:
    # importing the engines would import diffusers on every command.
    return click.option("--engine", type=click.Choice(["diffusers", "zoo"]), default=None,
                        help="Where the pipeline comes from: the diffusers implementation or "
                             "resbench's zoo [default: diffusers for the models it "
                             "implements, else zoo].")(f)


MAX_PIXELS_PER_SIDE = 16384
MAX_FRAMES = 1025
MAX_STEPS = 1000
"""Flow-matching and DDPM schedules are defined on 1000 training timesteps."""
MAX_BATCH = 64


def request_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--height --width --frames --steps --guidance --cfg/--no-cfg --cfg-mode --batch --seed.

    Sizes are bounded so that an absurd request (a typo such as --steps 100000000) is a
    usage error at once instead of hours of recording or an out-of-memory crash."""
    opts = [
        click.option("--seed", type=int, default=None, help="Request seed."),
        click.option("--batch", type=click.IntRange(1, MAX_BATCH), default=None,
                     help="Batch size (default 1)."),
        click.option("--cfg-mode", type=click.Choice(["sequential", "batched"]), default=None,
                     help="CFG as two passes per step or one batch of two."),
        click.option("--cfg/--no-cfg", default=None, help="Classifier-free guidance on/off."),
        click.option("--steps", type=click.IntRange(1, MAX_STEPS), default=None,
                     help="Denoising steps."),
        click.option("--frames", type=click.IntRange(1, MAX_FRAMES), default=None,
                     help="Frames (video models)."),
        click.option("--width", type=click.IntRange(1, MAX_PIXELS_PER_SIDE), default=None,
                     help="Width in pixels."),
        click.option("--height", type=click.IntRange(1, MAX_PIXELS_PER_SIDE), default=None,
                     help="Height in pixels."),
    ]
    for opt in opts:
        f = opt(f)
    return f


def force_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--force", is_flag=True,
                        help="Replace an existing run folder whole (never mixed with the new "
                             "run's files).")(f)


REQUEST_KEYS = ("height", "width", "frames", "steps", "cfg", "cfg_mode", "batch", "seed")


def request_overrides(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs.get(k) for k in REQUEST_KEYS if kwargs.get(k) is not None}


def emit(
    data: Mapping[str, Any],
    *,
    as_json: bool,
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    lines: Sequence[str] = (),
) -> None:
    """Render a result: JSON on stdout (data + tables as records), or lines + rich tables.

    The JSON is strict (RFC 8259): NaN and infinities, which `json.dumps` would write as the
    bare words NaN/Infinity that most parsers reject, are null."""
    if as_json:
        doc = dict(data)
        for title, frame in tables:
            doc[title] = frame
        click.echo(dumps_json(doc, indent=2))
        return
    console = Console() if Console().is_terminal else Console(width=200)
    for line in lines:
        console.print(line, highlight=False)
    for title, frame in tables:
        table = Table(title=title, title_justify="left")
        for col in frame.columns:
            table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left")
        for row in frame.itertuples(index=False):
            table.add_row(*[_fmt(v) for v in row])
        console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
