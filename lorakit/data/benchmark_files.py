"""Rows of the files the contamination check compares training data against, read one at a time.

Accepted: JSON Lines, JSON (a list of rows, or an object holding one), CSV, Parquet, plain text (one row a line) and
lm-eval task YAMLs whose data is local (`dataset_path: json|csv|parquet|text` with `dataset_kwargs.data_files`, the
form `lorakit eval --tasks FILE.jsonl` writes). Every failure is one DataError naming the file (and line); a line or
a JSON document larger than the caps below is refused rather than read into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from lorakit.config import parse_yaml
from lorakit.errors import DataError
from lorakit.io import decode, parse_json, read_text, require_file

MAX_LINE_BYTES = 16 << 20  # one JSON Lines row or text line
MAX_JSON_BYTES = 256 << 20  # a whole .json file (parsed at once); larger ones must be .jsonl
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".yaml", ".yml")
HINT = "give a .jsonl, .json, .csv, .parquet or .txt file of benchmark rows, or an lm-eval task .yaml with local data"


def benchmark_rows(path: str | Path, flag: str = "--against") -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) for each row of a benchmark file."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{flag} {path}: file not found", hint=HINT)
    require_file(path, DataError, HINT)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{flag} {path}: unsupported file type '{path.suffix or '(none)'}'", hint=HINT)
    if suffix in (".yaml", ".yml"):
        for file in task_data_files(path, flag):
            yield from benchmark_rows(file, f"{flag} {path}: data file")
        return
    reader = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet, ".txt": _text}[suffix]
    yield from reader(path)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path} line {number}: longer than {MAX_LINE_BYTES >> 20} MB",
                                hint="one benchmark row per line; is this a JSON Lines file?")
            yield number, raw


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for number, raw in _lines(path):
        if raw.strip():
            yield number, parse_json(decode(raw, f"{path} line {number}", DataError), path, DataError,
                                     hint="each line of a .jsonl file must be one JSON value", line=number)


def _text(path: Path) -> Iterator[tuple[int, Any]]:
    for number, raw in _lines(path):
        line = decode(raw, f"{path} line {number}", DataError).strip()
        if line:
            yield number, line


def _json(path: Path) -> Iterator[tuple[int, Any]]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DataError(f"{path}: a .json file larger than {MAX_JSON_BYTES >> 20} MB is read whole",
                        hint="convert it to .jsonl (one row a line), which is read a row at a time")
    data = parse_json(read_text(path, DataError), path, DataError)
    if isinstance(data, dict):  # {"data": [...]}, {"test": [...]}: the lists it holds
        lists = [value for value in data.values() if isinstance(value, list)]
        data = [row for rows in lists for row in rows] if lists else [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows", hint=HINT)
    yield from enumerate(data, start=1)


def _csv(path: Path) -> Iterator[tuple[int, Any]]:
    import csv
    import io

    csv.field_size_limit(MAX_LINE_BYTES)
    with open(path, "rb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        reader = csv.DictReader(text)
        try:
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if isinstance(k, str)}
        except UnicodeDecodeError:
            raise DataError(f"{path} near line {reader.line_num + 1}: not UTF-8 text", hint="save it as UTF-8") from None
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed CSV ({exc})", hint=HINT) from None


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        number = 0
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except OSError as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})", hint=HINT) from None
    except Exception as exc:  # pyarrow's ArrowInvalid and friends
        if type(exc).__module__.startswith("pyarrow"):
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})",
                            hint=HINT) from None
        raise


def task_data_files(path: Path, flag: str) -> list[Path]:
    """The local data files of an lm-eval task YAML (its test split's, else all of them)."""
    try:
        task = parse_yaml(read_text(path, DataError), path)
    except DataError:
        raise
    except Exception as exc:  # ConfigError from parse_yaml: same message, as a data problem
        raise DataError(str(getattr(exc, "message", exc)), hint=HINT) from None
    if not isinstance(task, dict):
        raise DataError(f"{flag} {path}: not an lm-eval task (a YAML mapping)", hint=HINT)
    kind = task.get("dataset_path")
    files = (task.get("dataset_kwargs") or {}).get("data_files") if isinstance(task.get("dataset_kwargs"), dict) \
        else None
    if kind not in ("json", "csv", "parquet", "text") or not files:
        raise DataError(f"{flag} {path}: the task's data is not a local file (dataset_path: {kind!r})",
                        hint="pass the benchmark's rows as a file with --against (e.g. exported with `datasets`)")
    if isinstance(files, dict):
        split = task.get("test_split") or task.get("validation_split")
        files = files.get(split) if split in files else [f for value in files.values() for f in _listed(value)]
    found = []
    for name in _listed(files):
        candidate = Path(name).expanduser()
        if not candidate.is_absolute() and not candidate.exists():
            candidate = path.parent / candidate
        if not candidate.exists():
            raise DataError(f"{flag} {path}: its data file {name} is not found", hint="check data_files in the task")
        found.append(candidate)
    return found


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
