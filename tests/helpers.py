"""What every test of bad input asserts, in one place: the command line as a user meets it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lorakit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments: str, code: int | None = None, leftover: Path | None = None) -> None:
    """A non-zero exit with one `error:` line and a `hint:`, no traceback and no "unexpected" (a bug caught only by
    the last-resort handler); each fragment appears in the output; `leftover`, if given, was not written (nor its
    staging folder)."""
    output = result.output
    assert result.exit_code != 0, output
    if code is not None:
        assert result.exit_code == code, output
    assert "error:" in output and "hint:" in output, output
    assert "Traceback" not in output and "unexpected" not in output, output
    for fragment in fragments:
        assert fragment in output, output
    if leftover is not None:
        assert not leftover.exists(), f"{leftover} was left behind"
        assert not list(leftover.parent.glob(f".{leftover.name}.tmp-*")), f"a staging folder of {leftover} remains"
