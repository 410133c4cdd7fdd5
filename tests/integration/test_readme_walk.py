"""The README's commands run as written: every ```bash block, in order, in a fresh copy of the repository, with the
`lorakit` a newcomer gets from `make setup`.

A block marked `<!-- not run: REASON -->` right above it is illustrative and skipped (the reason is shown); a block
marked `<!-- expected to fail: REASON -->` must fail cleanly (one `error:` line, no traceback) and is reported as
xfail until it passes. What a command prints must be lorakit's own: library chatter a user cannot act on fails the
block (tests/integration/test_library_noise.py says why each line is unwanted).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO
from ..markdown import scan
from .test_library_noise import library_noise

BLOCKS = [b for b in scan(REPO / "README.md")[1] if b.is_shell]
BLOCK_TIMEOUT_S = 900  # generous: CI shares 2 cores; the whole walk takes about 2 minutes on a quiet machine


class BlockFailed(AssertionError):
    """A README block exited non-zero (what an `expected to fail` block is allowed to do)."""


def _param(block):
    marks = [pytest.mark.xfail(reason=block.reason, raises=BlockFailed, strict=False)] \
        if block.mark == "expected to fail" else []
    return pytest.param(block, marks=marks, id=f"README.md:{block.line}")


@pytest.fixture(scope="module")
def working_copy(tmp_path_factory) -> Path:
    """A fresh copy of the repository's tracked files (a clone's worth: no out/, no caches)."""
    root = tmp_path_factory.mktemp("readme") / "lorakit"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / name)
    else:  # not a git checkout: what the README's commands read
        for name in ("README.md", "recipes", "examples"):
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, root / name)
    return root


_failed: list[str] = []


@pytest.mark.slow
@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_runs_as_written(block, working_copy):
    if block.mark == "not run":
        pytest.skip(f"marked not run: {block.reason}")
    if _failed:
        pytest.skip(f"an earlier README block failed ({_failed[0]})")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=working_copy, env=env,
                            capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    shown = (f"README.md:{block.line}\n{block.code}\n--- stdout\n{result.stdout[-3000:]}\n"
             f"--- stderr\n{result.stderr[-3000:]}")
    assert "Traceback" not in result.stderr, shown
    assert not library_noise(result.stderr), f"library chatter on stderr: {library_noise(result.stderr)}\n{shown}"
    if result.returncode != 0:
        if block.mark != "expected to fail":
            _failed.append(f"README.md:{block.line}")
        else:
            assert "error:" in result.stderr, f"an expected failure still names its reason on stderr\n{shown}"
        raise BlockFailed(f"exit code {result.returncode}\n{shown}")
