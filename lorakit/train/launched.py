"""The launched side of `--num-processes N`: what a training process started by lorakit's launcher
(lorakit.train.launch) does with the terminal and with its failures. Light (no torch): every command calls
`join_launch` first.

- Output: rank 0 prints to the user's terminal as a single-process run would; the other ranks write to
  `rank-N.log` in the launch folder (`LORAKIT_LAUNCH_DIR`), or, under a plain `accelerate launch` / `torchrun`, stay
  quiet.
- Errors: every training process that fails leaves a record (message, hint, exit code) in the launch folder instead
  of printing; the launching command reports the one that explains the failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from lorakit.console import err, out
from lorakit.train.distributed import world

LAUNCH_DIR_ENV = "LORAKIT_LAUNCH_DIR"
RESUME_HINT_ENV = "LORAKIT_RESUME_HINT"
ERRORS_DIR = "errors"
LAUNCHER_LOG = "launcher.log"


def launch_dir() -> Path | None:
    value = os.environ.get(LAUNCH_DIR_ENV)
    return Path(value) if value else None


def join_launch() -> None:
    """At the start of every command in a training process: rank 0 keeps the terminal; under lorakit's launcher the
    other ranks write to their log file, under a plain `accelerate launch` / `torchrun` they stay quiet."""
    me = world()
    if not me.distributed or me.is_main:
        return
    folder = launch_dir()
    if folder is None:
        err.quiet = out.quiet = True
        return
    log = os.open(folder / f"rank-{me.rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def report_failure(message: str, hint: str | None, exit_code: int, kind: str) -> bool:
    """In a training process started by lorakit's launcher: leave the failure for the parent to report (True);
    elsewhere False, and the caller prints it. `kind`: error | interrupted | unexpected."""
    folder = launch_dir()
    if folder is None or not world().distributed:
        return False
    me = world()
    record = {"rank": me.rank, "kind": kind, "message": message, "hint": hint, "exit_code": exit_code,
              "time": time.time()}
    errors = folder / ERRORS_DIR
    errors.mkdir(exist_ok=True)
    tmp = errors / f".rank-{me.rank}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, errors / f"rank-{me.rank}.json")
    return True


def quiet_child() -> bool:
    """A training process of lorakit's launcher: the parent prints the result."""
    return launch_dir() is not None and world().distributed


def resume_hint(default: str) -> str:
    return os.environ.get(RESUME_HINT_ENV) or default
