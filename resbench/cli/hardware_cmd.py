"""`resbench hardware`: the hardware presets, or one profile field by field."""

from __future__ import annotations

import click

from resbench.cli.common import emit, json_option
from resbench.hardware import get_profile, profile_dict, profile_frame, profiles_frame


def _list(as_json: bool) -> None:
    emit({}, as_json=as_json, tables=[("presets", profiles_frame())],
         lines=["Hardware presets (`resbench hardware show NAME` for every field):"])


@click.group("hardware", invoke_without_command=True)
@json_option
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    """Hardware profiles: list the presets, or show one preset or profile TOML."""
    if ctx.invoked_subcommand is None:
        _list(as_json)


@command.command("list")
@json_option
def list_presets(as_json: bool) -> None:
    """List the presets: memory, link bandwidth, GEMM rate, where the numbers come from."""
    _list(as_json)


@command.command("show")
@click.argument("name_or_file")
@json_option
def show(name_or_file: str, as_json: bool) -> None:
    """Every field of a preset (e.g. h100-80g) or profile TOML, with unit and provenance."""
    profile = get_profile(name_or_file)
    frame = profile_frame(profile)
    if not as_json:  # the readable column already carries value and unit
        frame = frame[["field", "readable", "provenance"]].rename(columns={"readable": "value"})
    emit({"profile": profile_dict(profile)}, as_json=as_json, tables=[("fields", frame)],
         lines=[f"{profile.name}: {profile.description}"])
