"""`resbench models [show NAME]`."""

from __future__ import annotations

import click

from resbench.cli.common import emit, json_option
from resbench.models.catalog import components_frame, models_frame, units_frame
from resbench.models.registry import get_model, in_zoo


@click.group("models", invoke_without_command=True)
@json_option
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    """List the model zoo: components, parameters (vs published) and weight size."""
    if ctx.invoked_subcommand is None:
        frame = models_frame()
        emit({}, as_json=as_json, tables=[("models", frame)])


@command.command("show")
@click.argument("name")
@click.option("--units", "show_units", is_flag=True, help="List every residency unit too.")
@json_option
def show(name: str, show_units: bool, as_json: bool) -> None:
    """Components and residency units of one model."""
    spec = get_model(name)
    d = spec.defaults
    data = {"model": spec.name, "aliases": list(spec.aliases), "family": spec.family,
            "description": spec.description,
            "defaults": {"height": d.height, "width": d.width, "frames": d.frames,
                         "steps": d.steps, "guidance": d.guidance, "shift": d.shift,
                         "cfg": d.cfg, "cfg_mode": d.cfg_mode},
            "boundary": spec.boundary, "notes": list(spec.notes)}
    if in_zoo(spec.name):
        frames = (components_frame, units_frame)
    else:  # only the diffusers engine builds it: its units are the engine's
        from resbench.engines import tables

        frames = (tables.components_frame, tables.units_frame)
    tables_ = [("components", frames[0](spec.name))]
    if show_units or as_json:
        tables_.append(("units", frames[1](spec.name)))
    lines = [f"[bold]{spec.name}[/bold] ({', '.join(spec.aliases) or 'no aliases'}): {spec.description}",
             f"defaults: {d.height}x{d.width}x{d.frames}, {d.steps} steps, guidance {d.guidance}, "
             f"shift {d.shift}, cfg {d.cfg} ({d.cfg_mode})"
             + (f", expert boundary {spec.boundary}" if spec.boundary else "")]
    emit(data, as_json=as_json, tables=tables_, lines=lines)
