"""`resbench` command line: a click group whose commands live one module each.

Every command parses its options, calls one library function and hands the result to
`emit` (a rich table on the terminal, or exactly one JSON document on stdout with --json).
`main` turns resbench errors into one line on stderr and a documented exit code.
"""

from __future__ import annotations

import sys

import click

from resbench import __version__
from resbench.errors import ResbenchError

EPILOG = """\b
Exit codes: 0 ok; 1 internal error; 2 bad input; 3 plan does not fit the budget
(or no plan does, or the device ran out of memory); 4 `compare --fail-on` found a
regression; 130 interrupted (finished work kept)."""


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    epilog=EPILOG,
)
@click.version_option(__version__, prog_name="resbench")
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, map errors to one line and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="resbench", standalone_mode=False,
                        auto_envvar_prefix="RESBENCH")
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ResbenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
