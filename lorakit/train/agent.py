"""`python -m lorakit.train.agent ARGS`: `accelerate launch ARGS` with its own messages kept out of the terminal.

The training processes accelerate starts inherit this process's stdout and stderr file descriptors (the user's
terminal: rank 0 prints there). accelerate's and torch's launcher messages, its failure report and the traceback of
a failed launch are written through Python's sys.stdout/sys.stderr, which point at the launch folder's
launcher.log instead; lorakit's launcher (lorakit.train.launch) reads it to explain a failure in one line.
"""

from __future__ import annotations

import os
import runpy
import sys

from lorakit.train.launched import LAUNCH_DIR_ENV, LAUNCHER_LOG


def main(argv: list[str]) -> None:
    log = open(os.path.join(os.environ[LAUNCH_DIR_ENV], LAUNCHER_LOG), "a", buffering=1)
    sys.stdout = sys.stderr = log  # Python-level only, before accelerate and torch create their loggers
    sys.argv = ["accelerate launch", *argv]
    runpy.run_module("accelerate.commands.launch", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
