"""Resources shipped with resbench: preset plans, sweeps and hardware profiles.

`strategies/presets/` and `sweeps/` at the top of a source checkout are the folders people
read and edit. They are found the same way from any working directory:

* in a source checkout (an editable install, or running from a clone) they are read where
  they are, beside the `resbench/` package, so an edit shows at once;
* in an installed wheel they are read from the package itself: the build copies them into
  `resbench/data/presets/` and `resbench/data/sweeps/` (see `setup.py`).

Hardware presets live in the package (`resbench/data/hardware/`) in both cases. Nothing here
looks at the working directory: a plan or sweep a user names by path is opened by path.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from resbench.errors import InputError
from resbench.residency.plan import Plan, load_plan

_CHECKOUT = Path(__file__).resolve().parent.parent
_IN_CHECKOUT = {"presets": _CHECKOUT / "strategies" / "presets", "sweeps": _CHECKOUT / "sweeps"}

DEFAULT_PLAN = "sglang-wan2.2"
"""The plan `profile` runs when none is given: sglang's Wan2.2 residency."""


def shipped_dir(kind: str) -> Path:
    """The folder holding the shipped `kind` ("presets" or "sweeps") TOML files."""
    if kind not in _IN_CHECKOUT:
        raise ValueError(f"unknown resource kind {kind!r}; valid: {', '.join(_IN_CHECKOUT)}")
    if (_CHECKOUT / "pyproject.toml").is_file() and _IN_CHECKOUT[kind].is_dir():
        return _IN_CHECKOUT[kind]
    return Path(str(resources.files("resbench") / "data" / kind))


def preset_paths() -> dict[str, Path]:
    """Preset plan files by file stem, sorted."""
    folder = shipped_dir("presets")
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def preset_names() -> list[str]:
    return list(preset_paths())


def resolve_plan(name_or_path: str | Path | None) -> Plan:
    """A plan TOML by path, or a shipped preset by name (None: `DEFAULT_PLAN`)."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_PLAN
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise InputError(f"plan file {name} does not exist; give a plan .toml or a preset "
                             f"name ({', '.join(preset_names())})")
        return load_plan(path)
    presets = preset_paths()
    if name in presets:
        return load_plan(presets[name])
    close = difflib.get_close_matches(name, list(presets), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise InputError(f"plan {name!r} is neither a file nor a preset: {hint}presets: "
                     f"{', '.join(presets) or '(none found in ' + str(shipped_dir('presets')) + ')'}")


def load_presets(folder: Path | None = None, *,
                 kinds: Mapping[str, str] | None = None) -> dict[str, Plan]:
    """Every preset plan by name (`folder`: another folder of plans instead of the shipped
    ones; a missing folder has none). With `kinds` (component → kind), plans naming
    components the model lacks are left out. A preset that fails to load is an error."""
    paths = (sorted(Path(folder).glob("*.toml")) if folder is not None
             else list(preset_paths().values()))
    out: dict[str, Plan] = {}
    for path in paths:
        plan = load_plan(path)
        if kinds is not None:
            try:
                plan.check_components(dict(kinds), source=str(path))
            except InputError:
                continue
        out.setdefault(plan.name, plan)
    return out


def sweep_path(family: str) -> Path:
    """The shipped sweep for a model family: `<family>.toml`, else `default.toml`."""
    folder = shipped_dir("sweeps")
    for name in (f"{family}.toml", "default.toml"):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"no sweep for family {family!r} in {folder} (looked for {family}.toml "
                     f"and default.toml); pass --sweep FILE")

