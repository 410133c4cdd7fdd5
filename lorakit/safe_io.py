"""Guarded reads of the files lorakit takes in: recipes, templates, datasets, manifests, tokenizer and config files.

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
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError

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
