"""The `lorakit` command line: a thin shell over the stage functions.

Each command parses flags, builds a recipe and calls one stage function. This module is the only error boundary:
a LorakitError becomes `error:` / `hint:` on stderr and a non-zero exit code; a traceback appears only with --debug.
Heavy libraries (torch, transformers, trl) are imported inside the commands so `lorakit --help` stays instant.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Callable, Optional

import typer

from lorakit import __version__
from lorakit.errors import LorakitError

app = typer.Typer(
    name="lorakit",
    help="LoRA/QLoRA fine-tuning for one consumer GPU: sft -> dpo -> merge -> quantize.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": os.environ.get("LORAKIT_DEBUG", "") not in ("", "0")}


def _print_error(message: str, hint: str | None) -> None:
    from lorakit.console import err

    err.print(f"[bold red]error:[/bold red] {message}", markup=True, highlight=False)
    if hint:
        err.print(f"[bold]hint:[/bold] {hint}", markup=True, highlight=False)


def guarded(fn: Callable) -> Callable:
    """Turn LorakitError (and any unexpected crash) into a clean message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except LorakitError as exc:
            if _state["debug"]:
                raise
            _print_error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _print_error("interrupted", None)
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not bad input: say so, and how to get the traceback
            if _state["debug"]:
                raise
            _print_error(f"unexpected {type(exc).__name__}: {exc}", "re-run with --debug for the full traceback")
            raise typer.Exit(1) from None

    return wrapper


def command(name: str, **kwargs) -> Callable:
    """Register a guarded command on `app`."""

    def decorator(fn: Callable) -> Callable:
        app.command(name, **kwargs)(guarded(fn))
        return fn

    return decorator


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lorakit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    if debug:
        _state["debug"] = True


def main() -> None:
    app()
