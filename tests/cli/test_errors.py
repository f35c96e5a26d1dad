"""How `main` reports what went wrong: one line and a documented code; `--debug` (or
RESBENCH_DEBUG=1) adds the traceback; a bug is exit 1 and says so; Ctrl-C is 130."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resbench.cli import cli, main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return int(exit_.value.code or 0), capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_debug_adds_the_traceback_above_the_same_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, plain = run_cli(capsys, "hardware", "show", "h100")
    code_debug, debug = run_cli(capsys, "--debug", "hardware", "show", "h100")
    assert code == code_debug == 2
    assert "Traceback" not in plain and "Traceback (most recent call last)" in debug
    assert "resbench/hardware.py" in debug  # where it was raised
    assert error_lines(plain) == error_lines(debug) and len(error_lines(plain)) == 1
    assert debug.rstrip().splitlines()[-1] == error_lines(debug)[0]


def test_resbench_debug_environment_variable(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESBENCH_DEBUG", "1")
    _, err = run_cli(capsys, "models", "show", "nope")
    assert "Traceback" in err
    monkeypatch.delenv("RESBENCH_DEBUG")
    _, err = run_cli(capsys, "models", "show", "nope")  # not left on by the run before
    assert "Traceback" not in err


def test_a_bug_is_exit_1_with_one_line_asking_for_debug(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("resbench.cli.models_cmd.models_frame", broken)
    code, err = run_cli(capsys, "models")
    assert code == 1 and "Traceback" not in err
    assert error_lines(err) == ["error: internal error, a bug in resbench (ZeroDivisionError: "
                                "division by zero); rerun with `resbench --debug ...` for the "
                                "traceback"]
    code, err = run_cli(capsys, "--debug", "models")
    assert code == 1 and "Traceback" in err and "in broken" in err


def test_ctrl_c_is_130(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("resbench.cli.models_cmd.models_frame", interrupted)
    code, err = run_cli(capsys, "models")
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"


def test_an_end_of_file_inside_a_command_is_not_an_interruption(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """click turns EOFError into Abort, which read as "interrupted" (130) before."""
    def truncated() -> None:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr("resbench.cli.models_cmd.models_frame", truncated)
    code, err = run_cli(capsys, "models")
    assert code == 1 and "interrupted" not in err
    assert "EOFError: Compressed file ended" in error_lines(err)[0]


def test_unwritable_file_errors_name_the_file(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def denied() -> None:
        raise PermissionError(13, "Permission denied", "/data/x.toml")

    monkeypatch.setattr("resbench.cli.models_cmd.models_frame", denied)
    code, err = run_cli(capsys, "models")
    assert code == 2
    assert error_lines(err) == ["error: cannot use '/data/x.toml': Permission denied"]


def test_usage_errors_are_one_line_with_the_help_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "export", "trace")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: Missing argument 'RUN'. (see `resbench export trace --help`)"]


def test_debug_is_a_group_option_with_the_exit_codes_in_the_help() -> None:
    assert {p.name for p in cli.params} == {"version", "debug"}
    assert "130 interrupted" in (cli.epilog or "") and "--debug" in (cli.epilog or "")


def test_from_the_shell_no_traceback_and_the_code() -> None:
    proc = subprocess.run([sys.executable, "-m", "resbench", "profile", "--model", "wan2.1-1.3b",
                           "--steps", "100000000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: Invalid value for '--steps': 100000000 is not in the range 1<=x<=1000. "
        "(see `resbench profile --help`)"]
