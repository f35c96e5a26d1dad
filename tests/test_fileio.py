from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resbench.errors import InputError
from resbench.fileio import (
    atomic_path,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    dumps_json,
    install_dir,
    plain_json,
)


def _reject(token: str) -> None:
    raise ValueError(f"not strict JSON: {token}")


def strict_loads(text: str) -> object:
    return json.loads(text, parse_constant=_reject)


@dataclasses.dataclass
class Point:
    x: float
    label: str


def test_strict_json_turns_every_non_finite_number_into_null() -> None:
    frame = pd.DataFrame({"bw": [1.5, float("nan")], "n": [1, 2]})
    doc = {"top": float("inf"), "nested": {"deep": [float("-inf"), 2.0, (np.float32("nan"),)]},
           "frame": frame, "np": np.float64(3.25), "int": np.int64(7), "path": Path("a/b"),
           "point": Point(float("nan"), "p")}
    text = dumps_json(doc)
    back = strict_loads(text)
    assert back == {"top": None, "nested": {"deep": [None, 2.0, [None]]},
                    "frame": [{"bw": 1.5, "n": 1}, {"bw": None, "n": 2}], "np": 3.25, "int": 7,
                    "path": "a/b", "point": {"x": None, "label": "p"}}
    with pytest.raises(ValueError):  # what json.dumps writes by default is not strict JSON
        strict_loads(json.dumps({"x": math.nan}))


def test_plain_json_keeps_plain_values() -> None:
    assert plain_json({"a": [1, "s", True, None, 0.5]}) == {"a": [1, "s", True, None, 0.5]}


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "plan.toml"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["plan.toml"]  # the temporary file is gone
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["plan.toml"]


def test_atomic_path_keeps_the_suffix_and_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "trace.json.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".gz" and tmp.name.startswith(".")
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_install_dir_replaces_a_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old-only.txt").write_text("old")
    new = tmp_path / ".run.new"
    new.mkdir()
    (new / "run.json").write_text("{}")
    install_dir(new, out)
    assert sorted(os.listdir(out)) == ["run.json"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_output_checks(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert check_output_file(tmp_path / "new" / "deeper" / "r.html", what="--out").name == "r.html"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(InputError, match="'.*adir' is a folder; give a file path"):
        (tmp_path / "adir").mkdir()
        check_output_file(tmp_path / "adir", what="--out")
    with pytest.raises(InputError, match="--report: '.*afile' is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "r.html", what="--report")
    with pytest.raises(InputError, match="cannot create folder .* is a file"):
        check_output_dir(tmp_path / "afile" / "a" / "b", what="--out")
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile"]  # no probe file left behind


def test_an_unwritable_folder_is_refused(unwritable_dir: Path) -> None:
    with pytest.raises(InputError, match="cannot write in"):
        check_output_file(unwritable_dir / "r.html", what="--out")


def test_profile_and_plan_saves_leave_the_old_file_when_interrupted(tmp_path, monkeypatch):
    """An interrupt between writing and renaming keeps the previous profile and plan whole."""


    from resbench.hardware import get_profile, save_profile
    from resbench.residency.plan import plan_from_dict

    profile_path, plan_path = tmp_path / "card.toml", tmp_path / "plan.toml"
    save_profile(get_profile("h100-80g"), profile_path)
    plan = plan_from_dict({"name": "p", "components": {}})
    plan.save(plan_path)
    before = {p: p.read_bytes() for p in (profile_path, plan_path)}

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_profile(get_profile("h200-141g"), profile_path)
    with pytest.raises(KeyboardInterrupt):
        plan_from_dict({"name": "q", "components": {}}).save(plan_path)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.toml", "plan.toml"]
