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
from typing import Any, Iterable, Iterator

from lorakit.errors import RunError

# Every output lorakit writes (runs, merged models, exports) carries one; a folder without it is not ours to replace.
OUTPUT_MANIFEST = "manifest.json"


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_can_write(target: Path, force: bool, what: str = "output", inputs: Iterable[str | Path] = (),
                    ours_only: bool = True) -> None:
    """Refuse an output that would lose work: an existing one without --force; whatever --force says, one that is or
    holds an input of the command, or (with `ours_only`) a folder lorakit did not write, such as `out/` itself."""
    if target.exists() and not target.is_dir():
        raise RunError(f"{what} {target} exists and is a file", hint="choose another output path")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{what} {target} cannot be created: {ancestor} is a file", hint="choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"{what} {target} cannot be created: {ancestor} is not writable",
                       hint="check its permissions, or choose another output path")
    resolved = target.resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            raise RunError(f"{what} {target} would replace {source}, which this command reads",
                           hint="choose another --output-dir")
    if not is_nonempty_dir(target):
        return
    if not force:
        raise RunError(
            f"{what} {target} already exists and is not empty",
            hint="pass --force to overwrite it, or choose another --output-dir",
        )
    if ours_only and not (target / OUTPUT_MANIFEST).is_file():
        raise RunError(f"{what} {target} holds files lorakit did not write (no {OUTPUT_MANIFEST}), so --force "
                       "will not replace it", hint="choose another --output-dir")


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
def atomic_dir(target: str | os.PathLike, force: bool = False, what: str = "output",
               inputs: Iterable[str | Path] = (), ours_only: bool = True) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes `target`, on any error it is removed."""
    target = Path(target)
    check_can_write(target, force, what, inputs, ours_only)
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
