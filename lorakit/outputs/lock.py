"""One writer per output: a command that writes an output holds a lock on it from start to finish.

Two terminals, or a scheduler that retries, must never write the same run: the second `lorakit sft -o out/run` would
otherwise find the first one's staging folder, and `--force` would delete it under the live trainer. So every command
that writes an output (sft, dpo, merge, quantize, export-base, run, eval's results, report) holds an exclusive
advisory lock (flock) on `.NAME.lock` beside it, which covers the staging folder, the rename and the finished folder.
The kernel releases it when the process dies, kill -9 included: a lock file nobody holds is just a file. A second
writer is refused at once, naming the holder ("out/run is being written by pid 4242 since ..."), and a command that
reads an output (merge of a run, serve-info, eval, report) refuses one that is being written.

Within one process a lock is re-entrant (quantize holds the merge folder it then asks merge to write). A command
that relaunches itself under accelerate hands its locks to its training processes through the environment; in a
multi-process run started by accelerate directly, rank 0 holds the lock (it is the one that writes).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lorakit.errors import RunError
from lorakit.io import check_output_path, file_mode
from lorakit.outputs.layout import lock_path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; one writer per output is then up to the user
    fcntl = None  # type: ignore[assignment]

HELD_ENV = "LORAKIT_HELD_OUTPUTS"  # lock files this process's parent holds for it (os.pathsep-separated)
# A reader's probe holds the lock shared for a moment; a writer that meets one retries for this long before it
# concludes that another writer holds it.
RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class Holder:
    pid: int | None
    since: str | None
    command: str | None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        return who + (f" since {self.since}" if self.since else "") + (f" ({self.command})" if self.command else "")


class OutputBusy(RunError):
    """Another live process is writing this output."""

    def __init__(self, path: Path, holder: Holder, reading: bool):
        if reading:
            super().__init__(f"{path} is being written by {holder.describe()}: it is not finished yet",
                             hint="wait for that command to finish, then run this one again")
        else:
            super().__init__(f"{path} is being written by {holder.describe()}",
                             hint="wait for it to finish, or stop it first (Ctrl-C keeps a checkpoint that --resume "
                                  "continues); two commands never write one output, --force included")
        self.path, self.holder = path, holder


@dataclass
class _Held:
    fd: int
    count: int = 1


_HELD: dict[str, _Held] = {}


def _key(path: Path) -> str:
    lock = lock_path(path)
    try:
        return str(lock.parent.resolve() / lock.name)
    except (OSError, RuntimeError):
        return str(lock.absolute())


def _inherited() -> set[str]:
    return {p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p}


def _set_inherited(keys: set[str]) -> None:
    if keys:
        os.environ[HELD_ENV] = os.pathsep.join(sorted(keys))
    else:
        os.environ.pop(HELD_ENV, None)


def _not_the_writing_rank() -> bool:
    """A training process other than rank 0 of a multi-process run: rank 0 writes the output (and holds the lock)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0") or 0) != 0


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return Holder(pid if isinstance(pid, int) else None, str(data["since"]) if data.get("since") else None,
                  str(data["command"]) if data.get("command") else None)


def writer_of(path: str | Path) -> Holder | None:
    """Who is writing `path` now: None when nobody is (or this process itself is)."""
    if fcntl is None:
        return None
    path = Path(path)
    key = _key(path)
    if key in _HELD or key in _inherited():
        return None
    try:
        fd = os.open(key, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_not_being_written(path: str | Path) -> None:
    """For commands that read an output: refuse one another process is writing (a run still training, a merge not
    yet finished)."""
    holder = writer_of(path)
    if holder is not None:
        raise OutputBusy(Path(path), holder, reading=True)


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir()
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # something else now lives there: keep it (and its parents)


def _acquire(lock: str) -> tuple[int, bool]:
    """An open descriptor of `lock` (created if needed) and whether this process now holds it exclusively (when not,
    the descriptor is there to read the holder from)."""
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if time.monotonic() >= deadline:
                return fd, False
            os.close(fd)
            time.sleep(0.05)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except OSError:
            same = False
        if same:
            return fd, True
        os.close(fd)  # the holder released and removed the file between our open and our lock: take the new one


@contextlib.contextmanager
def hold_output(path: str | Path, command: str | None = None) -> Iterator[None]:
    """Hold the writer lock of output `path` for the block; `OutputBusy` when another process holds it.

    A path that names no folder of its own, or whose folder cannot be created, is left to the command's own checks
    (which say what is wrong with it): nothing can be written there, so there is nothing to guard.
    """
    release = _take(Path(path), command)
    try:
        yield
    finally:
        release()


def _take(path: Path, command: str | None):
    """Take the lock of `path`; returns what releases it."""
    try:
        check_output_path(path)
    except RunError:
        return lambda: None
    key = _key(path)
    if fcntl is None or key in _inherited() or _not_the_writing_rank():
        return lambda: None
    if key in _HELD:
        held = _HELD[key]
        held.count += 1

        def release_inner() -> None:
            held.count -= 1

        return release_inner
    try:
        created = _make_parents(Path(key).parent)
    except OSError:
        return lambda: None
    try:
        fd, locked = _acquire(key)
    except OSError:
        _remove_if_empty(created)
        return lambda: None
    if not locked:
        holder = _read_holder(fd)
        os.close(fd)
        _remove_if_empty(created)
        raise OutputBusy(path, holder, reading=False)
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since, "command": command}).encode(), 0)
    _HELD[key] = _Held(fd)
    _set_inherited(_inherited() | {key})  # training processes started while it is held inherit it

    def release() -> None:
        del _HELD[key]
        _set_inherited(_inherited() - {key})
        with contextlib.suppress(OSError):
            os.unlink(key)  # while still holding it: a waiter that opened this file sees it is gone and retries
        os.close(fd)
        _remove_if_empty(created)

    return release
