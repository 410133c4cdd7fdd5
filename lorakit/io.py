"""Reading and writing files safely: lorakit's one leaf module for disk I/O (it imports nothing of lorakit's but
its errors).

Guarded reads of the files lorakit takes in (recipes, templates, datasets, manifests, tokenizer and config files).
Each read checks what a library would otherwise trip over deep in a stack frame, and fails as one `LorakitError`
naming the file and what is wrong with it:

- the path is not a regular file (a folder, a FIFO that would block forever, /dev/null, a symbolic link loop);
- the bytes are not UTF-8 (UnicodeDecodeError);
- JSON that is malformed (with line and column), nested deeper than any real row or config (RecursionError in the
  parser, or in whatever walks the value later), or holds an integer too long for Python to convert (ValueError
  "Exceeds the limit (4300 digits)");
- a value of the wrong shape (a list where a JSON object belongs).

The error class is the caller's choice (`ConfigError` for a recipe, `DataError` for a dataset, `RunError` for a run
folder); the raised error also carries `.path` and `.what`, so a caller can re-word it ("run X is damaged: ...").

Atomic writes: a file is written beside its target under a unique temporary name and renamed over it; a folder is
built in a hidden staging folder beside its target (`atomic_dir`) and renamed into place only when whole, so an
interrupted command never leaves a half-written output that a later command could mistake for a finished one.
What lands is readable by others as transformers' own files are (0644 files, 0755 folders under the usual umask
022): libraries that write through a private temporary file (safetensors) would otherwise leave weights 0600, which a
server under another user, a shared folder or a container cannot read.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from lorakit.errors import LorakitError, RunError

# Deeper than any dataset row, recipe or config file (a chat with tool calls nests about 6 levels); far below the
# depth at which Python's parsers or a later recursive walk (pyarrow, pydantic, yaml.safe_dump) hit the recursion limit.
MAX_DEPTH = 100


def _fail(error: type[LorakitError], path: str | Path, what: str, hint: str | None) -> LorakitError:
    exc = error(f"{path}: {what}", hint=hint)
    exc.path, exc.what = Path(path), what  # type: ignore[attr-defined]
    return exc


def file_kind(path: Path) -> str | None:
    """None for a regular file (after following links); otherwise what it is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if exc.errno == errno.ENOENT:
            return "a broken symbolic link" if os.path.islink(path) else "not found"
        return f"not readable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


def require_file(path: str | Path, error: type[LorakitError] = LorakitError, hint: str | None = None) -> Path:
    path = Path(path)
    kind = file_kind(path)
    if kind is not None:
        raise _fail(error, path, f"is {kind}" if not kind.startswith(("not ", "a broken")) else kind,
                    hint or "check the path")
    return path


def read_bytes(path: str | Path, error: type[LorakitError] = LorakitError, hint: str | None = None) -> bytes:
    path = require_file(path, error, hint)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail(error, path, f"cannot be read ({exc.strerror or exc})", hint or "check the file") from None


def decode(raw: bytes, path: str | Path, error: type[LorakitError] = LorakitError, hint: str | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _fail(error, path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, offset {exc.start})",
                    hint or "save the file as UTF-8") from None


def read_text(path: str | Path, error: type[LorakitError] = LorakitError, hint: str | None = None) -> str:
    """The file's text; every way it can fail is one `error` naming the file."""
    return decode(read_bytes(path, error, hint), path, error, hint)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a parsed JSON/YAML value nests more than `limit` containers (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(text: str, where: str | Path, error: type[LorakitError] = LorakitError, hint: str | None = None,
               expect: type | None = None, line: int | None = None) -> Any:
    """json.loads with every failure named: `where` (a file), `line` (for a JSON Lines row) and the problem."""
    at = f" line {line}" if line is not None else ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        position = f"at column {exc.colno}" if line is not None else f"at line {exc.lineno}, column {exc.colno}"
        raise _fail(error, f"{where}{at}", f"malformed JSON ({exc.msg} {position})",
                    hint or "fix the JSON syntax") from None
    except RecursionError:
        raise _fail(error, f"{where}{at}", f"JSON nested too deeply (more than {MAX_DEPTH} levels)",
                    hint or "flatten the value") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        problem = "an integer too long to read (more than 4300 digits)" if "digits" in str(exc) else str(exc)
        raise _fail(error, f"{where}{at}", problem, hint or "fix the value") from None
    # Depth is bounded by the number of brackets, which is cheap to count: walk only when it could be too deep.
    if text.count("[") + text.count("{") > MAX_DEPTH and too_deep(value):
        raise _fail(error, f"{where}{at}", f"JSON nested too deeply (more than {MAX_DEPTH} levels)",
                    hint or "flatten the value")
    if expect is not None and not isinstance(value, expect):
        wanted = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise _fail(error, f"{where}{at}", f"expected {wanted}, got {json_type(value)}", hint or "fix the file")
    return value


def json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_json(path: str | Path, error: type[LorakitError] = LorakitError, hint: str | None = None,
              expect: type | None = dict) -> Any:
    """A JSON file (an object by default), with every failure one `error` naming the file."""
    return parse_json(read_text(path, error, hint), path, error, hint, expect)


# ---------------------------------------------------------------------------------------------------------------
# Writing: modes, files, folders

# Every output lorakit writes carries this file (lorakit.outputs.layout names it MANIFEST_FILE): a folder without it
# is not lorakit's to replace, whatever --force says.
OUTPUT_MARK = "manifest.json"


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a newly created file gets (0644 under the usual umask 022), as transformers' own files do."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    return 0o777 & ~_umask()


def share_modes(folder: Path) -> None:
    """Give every file and folder under `folder` the modes a plain `open()` / `mkdir()` would: libraries that write
    through a private temporary file (safetensors, tempfile) leave 0600, which only the owner can read."""
    files, folders = file_mode(), folder_mode()
    os.chmod(folder, folders)
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, folders)
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, files)


def _write_atomic(path: Path, write) -> None:
    """Write into a unique temporary file beside `path`, then rename it over `path`: a reader sees the old file or
    the new one, never half of one, and two writers of the same file never share a temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path, content: bytes) -> None:
    _write_atomic(path, lambda handle: handle.write(content))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output_path(target: str | Path, what: str = "output") -> Path:
    """Refuse an output path that names no folder of its own ('', '.', '..', '/') or one the user works in: replacing
    it would first rename the current folder, the home folder or the whole disk out of the way."""
    raw = str(target)
    target = Path(target)
    if not raw.strip() or target.name in ("", ".", ".."):
        raise RunError(f"{what} path {raw!r} names no folder of its own",
                       hint="give a new folder's name, e.g. --output-dir out/run")
    try:
        resolved, cwd = target.resolve(), Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop in the path (RuntimeError before Python 3.13)
        raise RunError(f"{what} path {raw!r} cannot be resolved: {getattr(exc, 'strerror', None) or exc}",
                       hint="choose another output path") from None
    if resolved == cwd or resolved in cwd.parents:
        raise RunError(f"{what} {raw!r} is the current folder or one that holds it", hint="choose a new folder below it")
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise RunError(f"{what} {raw!r} is the home folder or the root of the disk", hint="choose a new folder below it")
    return target


def refuse_unsafe(path: Path) -> None:
    """Last guard before a rename or delete: never the current folder, an ancestor of it, home or /."""
    check_output_path(path, "folder")


def check_inputs(target: Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """Whatever --force says, an output must not be or hold a file or folder the command reads."""
    resolved = Path(target).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            raise RunError(f"{what} {target} would replace {source}, which this command reads",
                           hint="choose another --output-dir")


def check_can_write(target: Path, force: bool, what: str = "output", inputs: Iterable[str | Path] = (),
                    ours_only: bool = True) -> None:
    """Refuse an output that would lose work: an existing one without --force; whatever --force says, one that is or
    holds an input of the command, or (with `ours_only`) a folder lorakit did not write, such as `out/` itself."""
    target = check_output_path(target, what)
    if target.is_symlink() and not target.exists():
        raise RunError(f"{what} {target} is a broken symbolic link or a link loop", hint="choose another output path")
    if target.exists() and not target.is_dir():
        raise RunError(f"{what} {target} exists and is a file", hint="choose another output path")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise RunError(f"{what} {target} cannot be created: {ancestor} is a broken symbolic link or a link loop",
                           hint="choose another output path")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{what} {target} cannot be created: {ancestor} is a file", hint="choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"{what} {target} cannot be created: {ancestor} is not writable",
                       hint="check its permissions, or choose another output path")
    try:  # permissions do not tell everything (/sys, /proc, read-only mounts): try, before anything loads
        os.rmdir(tempfile.mkdtemp(prefix=".lorakit-probe-", dir=ancestor))
    except OSError as exc:
        raise RunError(f"{what} {target} cannot be created in {ancestor}: {exc.strerror or exc}",
                       hint="choose an output path on a writable disk") from None
    check_inputs(target, inputs, what)
    if not is_nonempty_dir(target):
        return
    if not force:
        raise RunError(
            f"{what} {target} already exists and is not empty",
            hint="pass --force to overwrite it, or choose another --output-dir",
        )
    if ours_only and not (target / OUTPUT_MARK).is_file():
        raise RunError(f"{what} {target} holds files lorakit did not write (no {OUTPUT_MARK}), so --force "
                       "will not replace it", hint="choose another --output-dir")


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished staging folder onto `target`, replacing what was there only once the new one is whole.

    Two renames (target aside, staging in): a process killed between them leaves no `target`, the old copy in a
    hidden `.NAME.old-*` and the new one still staged, so nothing half-written ever sits at `target`. Once the new
    one is in place, old copies (this one, or one a killed replacement left behind) are removed."""
    refuse_unsafe(target)
    share_modes(staging)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
    os.replace(staging, target)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _lock_folder(folder: Path) -> int | None:
    """Hold an exclusive lock on a staging folder while it is written (released by the kernel if the process dies,
    so a staging folder nobody holds is one a killed command left behind)."""
    try:
        import fcntl
    except ImportError:  # not on Linux/macOS: abandoned staging folders are simply not collected
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock_folder(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def remove_abandoned_staging(target: Path) -> None:
    """Delete `.NAME.tmp-*` folders that a killed merge, export or cache write left beside `target` (a 7B merge is
    15 GB of dead weight): only those no live process holds locked."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        fd = _lock_folder(stale) if stale.is_dir() and not stale.is_symlink() else None
        if fd is not None:
            try:
                shutil.rmtree(stale, ignore_errors=True)
            finally:
                _unlock_folder(fd)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False, what: str = "output",
               inputs: Iterable[str | Path] = (), ours_only: bool = True) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes `target`, on any error it is removed (and if the process is
    killed, the next atomic_dir for the same target removes it)."""
    target = Path(target)
    check_can_write(target, force, what, inputs, ours_only)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(staging, folder_mode())
    except OSError as exc:
        raise RunError(f"{what} {target} cannot be created: {exc.strerror or exc}",
                       hint="choose an output path on a writable disk") from None
    lock = _lock_folder(staging)
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _unlock_folder(lock)
