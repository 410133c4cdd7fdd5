"""Fuzz suite: hundreds of malformed inputs, each refused the way docs/guarantees.md promises.

For every case (tests/fuzz/cases.py): a non-zero exit; exactly one `error:` line, short, naming the file, field or
row, with a `hint:`; no traceback and no "unexpected" (a bug caught only by the last-resort handler); and the case's
folder exactly as it was before: no output, no staging folder, every input byte-identical. Nothing trains: damaged
runs are copies of one 2-step run built once per session.
"""

from __future__ import annotations

import pytest

from ..helpers import invoke
from .cases import CASES
from .workspace import Workspace, describe_changes, fingerprint

SEED = 19
MAX_ERROR_LINE = 420


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_refused_cleanly(case, world, world_fingerprint, tmp_path, monkeypatch):
    ws = Workspace(tmp_path, world, f"{SEED}:{case.id}")
    monkeypatch.chdir(tmp_path)
    argv = case.build(ws)
    before = fingerprint(tmp_path)
    result = invoke(*argv)
    after = fingerprint(tmp_path)

    output = result.output
    shown = f"$ lorakit {' '.join(map(str, argv))[:300]}\n{output[-2500:]}"
    assert result.exit_code != 0, shown
    # "error: unexpected <Type>" is the last-resort handler: a bug, not a refusal (library messages may say
    # "unexpected '}'" in their own words)
    assert "Traceback" not in output and "error: unexpected " not in output, shown
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, shown
    assert len(errors[0]) <= MAX_ERROR_LINE, f"error line of {len(errors[0])} characters\n{shown}"
    assert "hint:" in output, shown
    for fragment in case.expect + ws.expected:
        assert fragment in output, f"{fragment!r} not named\n{shown}"
    assert before == after, f"the case's folder changed: {describe_changes(before, after)}\n{shown}"


def test_suite_is_large_and_unique():
    assert len(CASES) >= 300
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_shared_run_and_model_were_never_touched(world, world_fingerprint):
    """Runs last in this module: no case changed the session's run or model (they are read in place)."""
    assert (fingerprint(world.run.parent), fingerprint(world.model)) == world_fingerprint
