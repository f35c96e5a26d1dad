"""`resbench` command line: a click group whose commands live one module each.

Every command parses its options, calls one library function and hands the result to
`emit` (a rich table on the terminal, or exactly one JSON document on stdout with --json).
`main` turns resbench errors into one line on stderr and a documented exit code.
"""

from __future__ import annotations

import logging
import sys
import traceback

import click

from resbench import __version__
from resbench.errors import DoesNotFitError, ResbenchError

EPILOG = """\b
Exit codes: 0 ok; 1 internal error; 2 bad input (or a path that cannot be read or
written); 3 plan does not fit the budget (or no plan does, or the device ran out of
memory); 4 `compare --fail-on` found a regression; 130 interrupted (finished work kept).
Errors are one line on stderr; `resbench --debug CMD` adds the traceback."""

_debug = {"on": False}  # set by --debug (or RESBENCH_DEBUG=1) for `main`'s error handler


def _set_debug(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    _debug["on"] = bool(value)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    epilog=EPILOG,
)
@click.version_option(__version__, prog_name="resbench")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="On an error, print the full traceback above the one-line message.")
def cli() -> None:
    """Find the fastest residency plan for a diffusion pipeline on your GPU and budget."""


def _register_commands() -> None:
    # Imported here so each command module can import `cli` helpers without cycles.
    import importlib

    for name in ("models", "hardware", "profile", "calibrate", "tune", "report", "export",
                 "compare"):
        try:
            module = importlib.import_module(f"resbench.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"resbench.cli.{name}_cmd":
                raise
            continue
        cli.add_command(module.command)


_register_commands()


class _StderrHandler(logging.Handler):
    """Records of the `resbench.*` loggers as `warning: ...` lines on stderr (click finds
    the current sys.stderr at each record, so runners that swap stderr see them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def _setup_logging() -> None:
    logger = logging.getLogger("resbench")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def exit_code(exc: BaseException) -> int:
    """Print `exc` as one line on stderr (the traceback first with --debug); return the exit
    code the README documents for it."""
    if _debug["on"] and not isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, click.exceptions.Abort) and isinstance(exc.__context__, EOFError):
        exc = exc.__context__  # click turns an EOFError into Abort; it is no interruption
    if isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
        click.echo("interrupted", err=True)
        return 130
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "resbench"
        click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    if isinstance(exc, ResbenchError):
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    if isinstance(exc, OSError) and exc.strerror:
        target = f" {exc.filename!r}" if exc.filename else ""
        click.echo(f"error: cannot use{target}: {exc.strerror}", err=True)
        return 2
    if isinstance(exc, MemoryError):
        click.echo("error: out of host memory; try a smaller request or --scale",
                   err=True)
        return DoesNotFitError.exit_code
    hint = "" if _debug["on"] else "; rerun with `resbench --debug ...` for the traceback"
    click.echo(f"error: internal error, a bug in resbench ({type(exc).__name__}: {exc}){hint}",
               err=True)
    return 1


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, map errors to one line and an exit code."""
    _debug["on"] = False
    _setup_logging()
    try:
        code = cli.main(args=argv, prog_name="resbench", standalone_mode=False,
                        auto_envvar_prefix="RESBENCH")
    except SystemExit:
        raise
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BaseException as exc:  # noqa: BLE001 - every error becomes one line and a code
        sys.exit(exit_code(exc))
    sys.exit(code if isinstance(code, int) else 0)
