"""Atomic outputs: a folder appears complete under its final name, or not at all.

Everything lorakit writes (run folders, merged models, exports, the tiny model) is built in a hidden staging folder
beside the target and renamed into place at the end, so an interrupted command never leaves a half-written output
that a later command could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lorakit.errors import RunError


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_can_write(target: Path, force: bool, what: str = "output") -> None:
    if target.exists() and not target.is_dir():
        raise RunError(f"{what} {target} exists and is a file", hint="choose another output path")
    if is_nonempty_dir(target) and not force:
        raise RunError(
            f"{what} {target} already exists and is not empty",
            hint="pass --force to overwrite it, or choose another --output-dir",
        )


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished staging folder onto `target`, replacing what was there only once the new one is whole."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a staging folder; on success it becomes `target`, on any error it is removed."""
    target = Path(target)
    check_can_write(target, force, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, 0o755)
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
