"""A journal (`tune --storage x.log`) whose last record was torn by a kill: mended on the
next run, without touching the records before it, and the study resumes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from resbench.cli import main
from resbench.tune.study import open_storage, repair_journal

REPO = Path(__file__).resolve().parents[2]
TUNE = ["tune", "--model", "wan2.1-1.3b", "--scale", "0.05", "--height", "128", "--width", "128",
        "--frames", "5", "--steps", "4", "--sweep", str(REPO / "tests" / "tune" / "tiny-sweep.toml"),
        "--hardware", "h100-80g", "--seed", "0", "--budget", "60MB", "--no-report", "--json"]
TORN = b'{"op_code": 5, "worker_id": "4f1c", "trial_id": 2, "state": 1, "val'


def _reject(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def tune(capsys: pytest.CaptureFixture[str], tmp_path: Path, trials: int) -> tuple[int, dict, str]:
    with pytest.raises(SystemExit) as exit_:
        main([*TUNE, "--storage", str(tmp_path / "study.log"), "--out", str(tmp_path / "p.toml"),
              "--presets", str(tmp_path / "no-presets"), "--n-trials", str(trials)])
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), (json.loads(out, parse_constant=_reject) if out else {}), err


def test_a_torn_last_record_is_cut_off_and_the_study_resumes(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, doc, err = tune(capsys, tmp_path, 3)
    assert code == 0, err
    journal = tmp_path / "study.log"
    intact = journal.read_bytes()
    with journal.open("ab") as fh:  # what a kill in the middle of optuna's append leaves
        fh.write(TORN)

    code, doc, err = tune(capsys, tmp_path, 2)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert f"its last record was cut short by an interrupted write ({len(TORN)} bytes)" in warnings[0]
    records = len(intact.splitlines())
    assert f"the {records} records before it are intact" in warnings[0]
    assert doc["trials_total"] == 5  # the 3 finished trials kept, 2 added
    assert journal.read_bytes().startswith(intact)  # nothing before the tear was changed
    assert (tmp_path / "study.log.torn").read_bytes() == TORN + b"\n"  # kept for inspection
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())
    summaries = optuna.get_all_study_summaries(open_storage(str(journal)))
    assert [s.n_trials for s in summaries] == [5]

    code, doc, err = tune(capsys, tmp_path, 1)  # healthy now: no warning, resumes again
    assert code == 0 and "warning" not in err and doc["trials_total"] == 6


def test_why_the_tear_must_go_before_the_next_append(tmp_path: Path) -> None:
    """optuna skips a torn *last* line when reading, but its next append is glued to it,
    and from then on the journal does not load. This is what `repair_journal` prevents."""
    path = tmp_path / "j.log"
    backend = JournalFileBackend(str(path))
    backend.append_logs([{"op_code": 0, "n": 1}])
    with path.open("ab") as fh:
        fh.write(TORN)
    assert list(JournalFileBackend(str(path)).read_logs(0)) == [{"op_code": 0, "n": 1}]
    backend.append_logs([{"op_code": 0, "n": 2}])
    backend.append_logs([{"op_code": 0, "n": 3}])
    with pytest.raises(ValueError):
        list(JournalFileBackend(str(path)).read_logs(0))


def test_a_whole_record_missing_only_its_newline_is_kept(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(b'{"op_code": 0, "n": 1}\n{"op_code": 0, "n": 2}')
    with caplog.at_level(logging.WARNING, logger="resbench.tune.study"):
        assert repair_journal(path) == 0
    assert path.read_bytes() == b'{"op_code": 0, "n": 1}\n{"op_code": 0, "n": 2}\n'
    assert "lacked its end of line" in caplog.text
    assert not (tmp_path / "j.log.torn").exists()


def test_a_healthy_journal_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j.log"
    text = b'{"op_code": 0, "n": 1}\n{"op_code": 0, "n": 2}\n'
    path.write_bytes(text)
    with caplog.at_level(logging.WARNING, logger="resbench.tune.study"):
        assert repair_journal(path) == 0
        assert repair_journal(tmp_path / "new.log") == 0  # not there yet: nothing to do
    assert path.read_bytes() == text and caplog.text == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.log"]  # the lock was released


def test_a_journal_of_one_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "j.log"
    path.write_bytes(TORN)
    assert repair_journal(path) == len(TORN)
    assert path.read_bytes() == b""
