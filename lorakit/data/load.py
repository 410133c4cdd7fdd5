"""Read a dataset from a local file, a folder of files, or the Hugging Face hub into a `datasets.Dataset`.

Local files go through `datasets`' own readers (Arrow, fast, memory-mapped). When a JSON file fails to parse, the
file is scanned again line by line so the error names the exact line, which `datasets`' message does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lorakit.compat import dataset_fingerprint
from lorakit.errors import DataError

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class LoadedData:
    dataset: "object"  # datasets.Dataset
    source: str
    fingerprint: str  # content hash for local files; hub fingerprint otherwise


def load_rows(source: str, subset: str | None = None, split: str = "train", max_rows: int | None = None) -> LoadedData:
    path = Path(source).expanduser()
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
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type '{path.suffix}'",
                hint="use .jsonl, .json, .csv or .parquet",
            )
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
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
        if not os.access(file, os.R_OK):
            raise DataError(f"{file} is not readable", hint="check the file's permissions")
        if file.stat().st_size == 0:
            raise DataError(f"{file} is empty", hint="point data.train at a file with at least one example")
    kind = LOCAL_SUFFIXES[files[0].suffix.lower()]
    if kind == "json":
        for file in files:
            _check_json(file)
    try:
        dataset = datasets.load_dataset(
            kind, data_files=[str(f) for f in files], split="train", cache_dir=_datasets_cache()
        )
    except Exception as exc:  # datasets raises many types; the message is what matters to the user
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # blank lines only, `[]`, a CSV header without rows (datasets 5 says so in a plain ValueError)
        if isinstance(exc, EmptyDatasetError) or "corresponds to no data" in message:
            where = files[0] if len(files) == 1 else files[0].parent
            raise DataError(f"{where} has no rows", hint="point data.train at a file with at least one example") from None
        raise DataError(f"cannot read {files[0] if len(files) == 1 else files[0].parent}: {message}",
                        hint="check that every row has the same columns and types") from None
    return dataset


def _check_json(file: Path) -> None:
    """Find the first malformed line of a JSON Lines file (or the position in a JSON file) before datasets does."""
    if file.suffix.lower() == ".jsonl":
        with open(file, encoding="utf-8", errors="strict") as handle:
            try:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"{file} line {number}: malformed JSON ({exc.msg} at column {exc.colno})",
                            hint="each line of a .jsonl file must be one JSON object",
                        ) from None
                    if not isinstance(row, dict):
                        raise DataError(
                            f"{file} line {number}: expected a JSON object, got {type(row).__name__}",
                            hint="each line of a .jsonl file must be one JSON object",
                        )
            except UnicodeDecodeError as exc:
                raise DataError(f"{file}: not UTF-8 text ({exc.reason})", hint="save the file as UTF-8") from None
        return
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file} line {exc.lineno}: malformed JSON ({exc.msg})", hint="fix the JSON syntax") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason})", hint="save the file as UTF-8") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(f"{file}: expected a JSON list of objects", hint="or use .jsonl with one object per line")


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
    from lorakit.cache import cache_dir

    return str(cache_dir() / "datasets") if "LORAKIT_CACHE" in os.environ else None


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
