"""Read a dataset from a local file, a folder of files, or the Hugging Face hub into a `datasets.Dataset`.

Local files go through `datasets`' own readers (Arrow, fast, memory-mapped). When a JSON file fails to parse, the
file is scanned again line by line so the error names the exact line, which `datasets`' message does not.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lorakit.cache import cache_dir
from lorakit.compat import dataset_fingerprint
from lorakit.errors import DataError
from lorakit.io import decode, json_type, parse_json, read_text, require_file

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class LoadedData:
    dataset: "object"  # datasets.Dataset
    source: str
    fingerprint: str  # content hash for local files; hub fingerprint otherwise


def load_rows(source: str, subset: str | None = None, split: str = "train", max_rows: int | None = None) -> LoadedData:
    path = Path(source).expanduser()
    if not str(source).strip():
        raise DataError("the data path is empty", hint="point data.train / --data at a file, a folder or a hub id")
    if path.is_symlink() and not path.exists():
        raise DataError(f"data file {source} is a broken symbolic link or a link loop", hint="check the path")
    if path.exists():
        files = _local_files(path)
        dataset = _read_local(files)
        fingerprint = _hash_files(files)
    elif HUB_ID.match(source) and not source.startswith((".", "/")) and path.suffix.lower() not in LOCAL_SUFFIXES:
        dataset = _read_hub(source, subset, split)
        fingerprint = f"hub:{source}:{subset}:{split}:{dataset_fingerprint(dataset)}"
    else:
        raise DataError(f"data file {source} not found", hint="check the path (relative paths are from the current folder)")
    if len(dataset) == 0:
        raise DataError(f"{source} has no rows", hint="point data.train at a file with at least one example")
    if max_rows is not None and max_rows < len(dataset):
        dataset = dataset.select(range(max_rows))
        fingerprint += f":first{max_rows}"
    return LoadedData(dataset=dataset, source=source, fingerprint=fingerprint)


def fingerprint_source(source: str | None, subset: str | None = None, split: str = "train") -> str:
    """A cheap identity for a data source, without loading it: a content hash for local files."""
    if not source:
        return "none"
    path = Path(source).expanduser()
    if path.exists():
        return _hash_files(_local_files(path))
    return f"hub:{source}:{subset}:{split}"


def _local_files(path: Path) -> list[Path]:
    if not path.is_dir():
        require_file(path, DataError, hint="point data.train at a .jsonl, .json, .csv or .parquet file, or a folder")
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type '{path.suffix}'",
                hint="use .jsonl, .json, .csv or .parquet",
            )
        return [path]
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
    except OSError as exc:
        raise DataError(f"folder {path} cannot be listed: {exc.strerror or exc}", hint="check its permissions") from None
    if not files:
        raise DataError(f"folder {path} holds no .jsonl/.json/.csv/.parquet files", hint="check the folder")
    kinds = {LOCAL_SUFFIXES[p.suffix.lower()] for p in files}
    if len(kinds) > 1:
        raise DataError(f"folder {path} mixes file types ({', '.join(sorted(kinds))})", hint="keep one type per folder")
    return files


def _read_local(files: list[Path]):
    import datasets
    from datasets.data_files import EmptyDatasetError

    for file in files:
        require_file(file, DataError)
        if not os.access(file, os.R_OK):
            raise DataError(f"{file} is not readable", hint="check the file's permissions")
        if file.stat().st_size == 0:
            raise DataError(f"{file} is empty", hint="point data.train at a file with at least one example")
    kind = LOCAL_SUFFIXES[files[0].suffix.lower()]
    # Each reader's own errors do not say which file, line or row (pandas: "Error tokenizing data", datasets: "An
    # error occurred while generating the dataset"): scan every file first, naming the first problem exactly.
    for file in files:
        {"json": _check_json, "csv": _check_csv, "parquet": _check_parquet}[kind](file)
    try:
        dataset = datasets.load_dataset(
            kind, data_files=[str(f) for f in files], split="train", cache_dir=_datasets_cache()
        )
    except Exception as exc:  # datasets raises many types; the message is what matters to the user
        message = _innermost_message(exc)
        # blank lines only, `[]`, a CSV header without rows (datasets 5 says so in a plain ValueError)
        if isinstance(exc, EmptyDatasetError) or "corresponds to no data" in message:
            where = files[0] if len(files) == 1 else files[0].parent
            raise DataError(f"{where} has no rows", hint="point data.train at a file with at least one example") from None
        raise DataError(f"cannot read {files[0] if len(files) == 1 else files[0].parent}: {message}",
                        hint="check that every row has the same columns and types") from None
    return dataset


def _innermost_message(exc: BaseException) -> str:
    """datasets wraps the reader's error ("An error occurred while generating the dataset"): report the cause."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


JSONL_HINT = "each line of a .jsonl file must be one JSON object"


def _check_json(file: Path) -> None:
    """Find the first malformed line of a JSON Lines file (or the position in a JSON file) before datasets does:
    syntax, bytes that are not UTF-8, nesting too deep, integers too long, rows that are not objects."""
    if file.suffix.lower() == ".jsonl":
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                line = decode(raw, f"{file} line {number}", DataError)
                parse_json(line, file, DataError, hint=JSONL_HINT, expect=dict, line=number)
        return
    data = parse_json(read_text(file, DataError), file, DataError, expect=list,
                      hint="a .json data file is a list of objects; or use .jsonl with one object per line")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{file} row {number}: expected a JSON object, got {json_type(row)}",
                            hint="a .json data file is a list of objects; or use .jsonl with one object per line")


def _check_csv(file: Path) -> None:
    """Every row of a CSV file has the header's number of fields, the text is UTF-8, and there is a data row."""
    import csv
    import io

    hint = "every row of a CSV file needs the header's columns (quote fields that hold commas or line breaks)"
    with open(file, "rb") as handle:
        text = decode(handle.read(), file, DataError)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, rows = None, 0
    try:
        for fields in reader:
            if not fields or fields == [""]:
                continue  # blank lines: pandas skips them too
            if header is None:
                header = fields
                if len(set(header)) != len(header) or any(not name.strip() for name in header):
                    raise DataError(f"{file} line {reader.line_num}: the header has empty or repeated column names "
                                    f"({', '.join(repr(h) for h in header[:8])})", hint="name every column once")
                continue
            rows += 1
            if any("\x00" in value for value in fields):
                raise DataError(f"{file} line {reader.line_num}: holds a NUL byte (binary data, not text?)", hint=hint)
            if len(fields) != len(header):
                raise DataError(f"{file} line {reader.line_num}: {len(fields)} field(s), but the header has "
                                f"{len(header)}", hint=hint)
    except csv.Error as exc:
        why = "a quoted field is never closed" if "end of data" in str(exc) else str(exc)
        raise DataError(f"{file} line {reader.line_num}: malformed CSV ({why})", hint=hint) from None
    if rows == 0:
        raise DataError(f"{file} has no rows" + (" (only a header)" if header else ""),
                        hint="point data.train at a file with at least one example")


def _check_parquet(file: Path) -> None:
    """A Parquet file whose footer and schema read, with at least one row."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(file).metadata
    except Exception as exc:  # pyarrow: ArrowInvalid, OSError...; the reason is in the message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{file}: not a readable Parquet file ({reason[:200]})",
                        hint="re-export the file (cut short, or not Parquet at all?)") from None
    if metadata.num_rows == 0:
        raise DataError(f"{file} has no rows", hint="point data.train at a file with at least one example")


def _read_hub(source: str, subset: str | None, split: str):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(source, subset, split=split, cache_dir=_datasets_cache())
    except DatasetNotFoundError:
        raise DataError(f"cannot load hub dataset {source}: not a local path, not in the datasets cache, and not "
                        "found on the hub (or the hub is offline)",
                        hint="check the path or dataset id; for a hub dataset check that the hub is reachable") from None
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"hub dataset {source}: {first}", hint="check data.subset and data.split") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot load hub dataset {source}: {first}",
            hint="it is not a local path; for a hub dataset check the id and that the hub is reachable",
        ) from None


def _datasets_cache() -> str | None:
    return str(cache_dir() / "datasets") if "LORAKIT_CACHE" in os.environ else None


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
