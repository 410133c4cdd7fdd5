"""Tokenization cache: the same data, tokenizer, template and settings are tokenized once.

Entries are Arrow folders written by `datasets.save_to_disk` (no pickle), keyed by a hash of everything that
changes the tokens, and written atomically so an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from lorakit import __version__
from lorakit.cache import cache_dir
from lorakit.io import atomic_dir


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    # chat_template may be one string or several named ones (default, tool_use). (The model's generation_config eos
    # list changes which tokens stop a turn too: the callers key on their Stops.)
    digest.update(json.dumps(tokenizer.chat_template or "", sort_keys=True).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({**parts, "lorakit": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


META_FILE = "lorakit-meta.json"


def cached_dataset(kind: str, key: str, build: Callable[[], tuple[Any, dict[str, Any]]]):
    """Load the dataset cached under `key`, or build and cache it.

    `build` returns (dataset, meta); meta (e.g. the detected format) is stored beside it. Returns
    (dataset, meta, was_cached).
    """
    import datasets

    folder = Path(cache_dir()) / "tokenized" / f"{kind}-{key}"
    if (folder / "dataset_info.json").exists() and (folder / META_FILE).exists():
        try:
            return datasets.load_from_disk(str(folder)), json.loads((folder / META_FILE).read_text()), True
        except Exception:  # a corrupt entry is rebuilt, never trusted
            pass
    dataset, meta = build()
    try:
        with atomic_dir(folder, force=True, ours_only=False) as staging:
            dataset.save_to_disk(str(staging))
            (staging / META_FILE).write_text(json.dumps(meta))
        dataset = datasets.load_from_disk(str(folder))
    except OSError:
        pass  # a read-only or full cache only costs the next run a re-tokenization
    return dataset, meta, False
