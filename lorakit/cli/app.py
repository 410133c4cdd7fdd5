"""The Typer app, its one error boundary and the registry of commands.

Every command is registered through `command`, which wraps it in `guarded`: a LorakitError becomes `error:` /
`hint:` on stderr and its exit code; any other exception says it is unexpected and how to see the traceback
(--debug). Nothing else in lorakit prints errors or exits.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Annotated, Callable, Optional

import typer

from lorakit import __version__
from lorakit.errors import LorakitError, RunInterrupted

app = typer.Typer(
    name="lorakit",
    help="LoRA/QLoRA fine-tuning for one consumer GPU: sft -> dpo -> merge -> quantize.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

state = {"debug": os.environ.get("LORAKIT_DEBUG", "") not in ("", "0")}


def _print_error(message: str, hint: str | None) -> None:
    from rich.markup import escape

    from lorakit.console import err

    # escape: messages quote paths, extras ("lorakit[llama-cpp]") and regexes that Rich would read as markup
    err.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False)
    if hint:
        err.print(f"[bold]hint:[/bold] {escape(hint)}", markup=True, highlight=False)


def _fail(message: str, hint: str | None, code: int, kind: str) -> None:
    """Print a failure, or, in a training process of `--num-processes`, leave it for the launching command to
    report once (lorakit.train.launched)."""
    from lorakit.train.launched import report_failure

    if not report_failure(message, hint, code, kind):
        _print_error(message, hint)


def guarded(fn: Callable) -> Callable:
    """Turn LorakitError (and any unexpected crash) into a clean message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except LorakitError as exc:
            kind = "interrupted" if isinstance(exc, RunInterrupted) else "error"
            if state["debug"]:
                _fail(exc.message, exc.hint, exc.exit_code, kind)
                raise
            _fail(exc.message, exc.hint, exc.exit_code, kind)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _fail("interrupted", None, 130, "interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not bad input: say so, and how to get the traceback
            message = f"unexpected {type(exc).__name__}: {exc}"
            if state["debug"]:
                _fail(message, "see the traceback above", 1, "unexpected")
                raise
            _fail(message, "re-run with --debug for the full traceback", 1, "unexpected")
            raise typer.Exit(1) from None

    return wrapper


# Every command's path (("sft",), ("data", "check"), ...), as registered: the help tests walk it.
COMMANDS: list[tuple[str, ...]] = []
GROUPS: dict[str, typer.Typer] = {}


def command(name: str, group: str | None = None, **kwargs) -> Callable:
    """Register a guarded command on `app` (or on one of its groups, e.g. `data`)."""

    def decorator(fn: Callable) -> Callable:
        (GROUPS[group] if group else app).command(name, **kwargs)(guarded(fn))
        COMMANDS.append((group, name) if group else (name,))
        return fn

    return decorator


def command_group(name: str, help: str) -> None:
    GROUPS[name] = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(GROUPS[name], name=name)


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
    state["debug"] = debug or os.environ.get("LORAKIT_DEBUG", "") not in ("", "0")
    # Library chatter (per-step tqdm bars, advisory warnings) would bury lorakit's own progress and errors.
    for name, value in (("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    # append: filters set earlier (the test suite's, which make lorakit's own deprecated calls errors) still win
    warnings.filterwarnings("ignore", category=FutureWarning, append=True)
    warnings.filterwarnings("ignore", category=DeprecationWarning, append=True)
    from lorakit.compat import quiet_bitsandbytes_cpu_kernel_advice
    from lorakit.train.launched import join_launch

    quiet_bitsandbytes_cpu_kernel_advice()
    join_launch()  # a training process of several: only rank 0 talks to the terminal


def main() -> None:
    app()
