"""The errors a user can act on.

Every problem caused by input (a recipe, a dataset, a model folder, a GPU that is too small) is raised as a
LorakitError with a one-line message naming the file, row or field, and a hint saying what to do. The CLI prints
them as `error:` / `hint:` and exits non-zero; anything else is a bug and shows a traceback only with --debug.
"""

from __future__ import annotations


class LorakitError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(LorakitError):
    """A recipe or flag is wrong."""

    exit_code = 2


class DataError(LorakitError):
    """A dataset is missing, malformed, or would train the wrong tokens."""


class ModelError(LorakitError):
    """A model, adapter or tokenizer cannot be loaded safely."""


class RunError(LorakitError):
    """A run folder is missing, incomplete, or would be overwritten."""


class ResourceError(LorakitError):
    """Not enough GPU memory, disk, or an optional dependency is missing."""


class RunInterrupted(LorakitError):
    """Training stopped on Ctrl-C (or a polite kill) after saving a checkpoint: `--resume` continues it."""

    exit_code = 130


class RewardError(LorakitError):
    """A reward function cannot be loaded, raised, or returned something other than one number per completion."""
