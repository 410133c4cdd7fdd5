"""Trainer-ready data, shared by SFT and DPO: the train/eval split and what a run records about its data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from lorakit.config import DataSection
from lorakit.errors import ConfigError


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset of tokens (+ lint columns)
    eval: Any | None
    format: str
    fingerprint: str
    source: str
    stats: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    lint_columns: tuple[str, ...] = ()  # computed for the checks; the trainer must not see them
    # (1-based row, canonical row) of the first training row the screen kept: what a run shows as it starts
    first_example: tuple[int, dict[str, Any]] | None = None

    def for_trainer(self, dataset):
        return dataset.remove_columns([c for c in self.lint_columns if c in dataset.column_names])


def first_kept(rows, screen) -> tuple[int, dict[str, Any]] | None:
    """(1-based row, canonical row) of the first row the data screen does not drop."""
    if rows is None:
        return None
    dropped = screen.dropped if screen is not None else {}
    index = next((i for i in range(len(rows)) if i not in dropped), None)
    return (index + 1, dict(rows[index])) if index is not None else None


def tokenize_with_eval(data: DataSection, seed: int, what: str, tokenize: Callable[..., tuple],
                       drop_rows: Collection[int] = ()):
    """Tokenize data.train, and data.eval or a data.val_size split of it.

    `tokenize(source, max_rows)` returns (dataset, format, fingerprint, was_cached). `drop_rows`: source rows
    (0-based) the data screen removes (lorakit.data.quality), before any split. Returns (train, eval or None,
    format, fingerprint covering both files, was_cached).
    """
    if not data.train:
        raise ConfigError(f"no {what}", hint="set data.train in the recipe or pass --data FILE")
    train, fmt, fingerprint, cached = tokenize(data.train, data.max_rows)
    if drop_rows:
        train = without_rows(train, set(drop_rows))
    evaluation = None
    if data.eval:
        evaluation, _, eval_fp, _ = tokenize(data.eval, None)
        fingerprint += f"+eval:{eval_fp}"
    elif data.val_size:
        if len(train) < 2:
            raise ConfigError("data.val_size needs at least 2 rows", hint="set data.val_size: 0 or add rows")
        # the split's own rule (datasets: floor((1 - size) * n) train rows), checked here so it names the field
        if math.floor((1 - data.val_size) * len(train)) < 1:
            raise ConfigError(f"data.val_size {data.val_size} of {len(train)} rows in {data.train} leaves no row to "
                              "train on", hint="lower data.val_size, or add rows")
        train, evaluation = split_by_row(train, data.val_size, seed)
    return train, evaluation, fmt, fingerprint, cached


def without_rows(dataset, rows: set[int]):
    """The examples of `dataset` whose source row is not in `rows` (an example's row is its `row` column, or its
    position when each row gave one example)."""
    sources = dataset["row"] if "row" in dataset.column_names else range(len(dataset))
    keep = [i for i, row in enumerate(sources) if row not in rows]
    if not keep:
        raise ConfigError("the data screen dropped every training row",
                          hint="check data.dedup / data.decontaminate, and `lorakit data check` the file")
    return dataset.select(keep)


def split_by_row(dataset, val_size: float, seed: int):
    """Hold out val_size of the rows. When one source row gave several examples (a conversation whose turns are
    trained separately), its examples stay on one side, so eval never scores a prefix of a training conversation."""
    rows = dataset["row"] if "row" in dataset.column_names else None
    if rows is None or len(set(rows)) == len(rows):
        split = dataset.train_test_split(test_size=val_size, seed=seed)
        return split["train"], split["test"]
    import random

    unique = sorted(set(rows))
    held = set(random.Random(seed).sample(unique, max(1, round(val_size * len(unique)))))
    train = [i for i, r in enumerate(rows) if r not in held]
    if not train:
        raise ConfigError("data.val_size leaves no training rows", hint="lower data.val_size or add rows")
    return dataset.select(train), dataset.select([i for i, r in enumerate(rows) if r in held])
