"""`resbench calibrate`: measure this machine's GPU and write a hardware profile TOML."""

from __future__ import annotations

from pathlib import Path

import click

from resbench.calibrate import calibrate
from resbench.cli import preflight
from resbench.cli.common import emit, json_option, stderr
from resbench.hardware import profile_dict, profile_frame


@click.command("calibrate")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("calibrated-hardware.toml"),
              help="Profile TOML to write; raw samples go beside it as .samples.json.")
@click.option("--quick", is_flag=True, help="Fewer and smaller sizes.")
@click.option("--base", default=None,
              help="Preset or TOML for the fields not measured (default: this card's preset).")
@json_option
def command(out: Path, quick: bool, base: str | None, as_json: bool) -> None:
    """Measure copy bandwidths, compute rates and overheads of this machine's CUDA GPU."""
    preflight.outputs(out=out)
    stderr.print(f"calibrating{' (quick)' if quick else ''}: about 45 s", highlight=False)
    profile = calibrate(out, base_profile=base, quick=quick)
    frame = profile_frame(profile)
    if not as_json:
        frame = frame[["field", "readable", "provenance"]].rename(columns={"readable": "value"})
    emit({"out": str(out), "samples": str(out.with_suffix(".samples.json")),
          "profile": profile_dict(profile)}, as_json=as_json,
         tables=[("fields", frame)],
         lines=[f"wrote {out} and {out.with_suffix('.samples.json')}"])
