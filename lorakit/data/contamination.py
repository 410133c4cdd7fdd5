"""Benchmark contamination: training rows that contain a benchmark (or eval) row, by word n-gram overlap.

The benchmark side is indexed once: every word n-gram (n = 13 by default, lm-eval's decontamination convention) of
each question and answer text, as 64-bit hashes in one sorted numpy array (12 bytes a gram). A text shorter than n
words (most short questions) is one gram of its own length, so "What is the capital of France?" is found inside a
longer training row; texts of fewer than MIN_WORDS words are too common to count. The training side is streamed
in batches, its grams computed for every length the index holds and looked up with a binary search.

A training row's overlap with a benchmark row is the fraction of the benchmark row's grams found in the training
row; rows at or above the threshold are reported with the benchmark row they contain. (lm-eval's own
decontamination counts a single shared 13-gram: threshold 0 here.)
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from lorakit.data.texts import words

MIN_WORDS = 3
BATCH_ROWS = 2048
FILTER_BITS = 24  # 16 MB of booleans: ~6% false positives at a million benchmark grams
_MASK = (1 << 64) - 1
_PRIME = 0x100000001B3  # FNV's 64-bit prime: the rolling polynomial's base


@dataclass(frozen=True)
class BenchmarkRow:
    source: str  # the file (or "eval data")
    row: int  # 1-based row (or line) number in it
    text: str  # its first text, for the report
    grams: int  # distinct grams it contributes


@dataclass(frozen=True)
class Contaminated:
    row: int  # 0-based training row
    benchmark: BenchmarkRow
    overlap: float  # fraction of the benchmark row's grams found in the training row


@dataclass
class ContaminationScan:
    found: list[Contaminated] = field(default_factory=list)  # one per training row: its highest overlap
    rows: int = 0
    seconds: float = 0.0
    benchmark_rows: int = 0
    sources: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def segment_grams(segments: list[list[str]], lengths: Iterable[int], n: int, whole_short: bool):
    """(gram hashes, segment index of each) of `segments` (word lists, empty ones allowed): every window of each
    length in `lengths` that lies inside one segment. `whole_short` (the benchmark side): a length below n only as a
    whole segment. One numpy pass over the batch: a polynomial rolling hash, one multiply-add per length."""
    import numpy as np

    wanted = sorted(set(lengths))
    sizes = np.fromiter((len(s) for s in segments), dtype=np.int64, count=len(segments))
    total = int(sizes.sum())
    if not total or not wanted:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    # Python's str hash (cached on each string object, so cheap): the index lives in this process only.
    flat = np.fromiter((hash(t) & _MASK for s in segments for t in s), dtype=np.uint64, count=total)
    owner = np.repeat(np.arange(len(segments)), sizes)
    starts_of = np.cumsum(sizes) - sizes
    hashes, owners = [], []
    gram = flat
    with np.errstate(over="ignore"):
        for k in range(1, max(wanted) + 1):
            if k > 1:
                gram = gram[:-1] * np.uint64(_PRIME) + flat[k - 1:]
            if k not in wanted:
                continue
            starts = np.arange(len(gram))
            mine = owner[: len(gram)]
            inside = mine == owner[k - 1:]
            if whole_short and k < n:  # a short text is one gram of its own length
                inside &= (sizes[mine] == k) & (starts == starts_of[mine])
            hashes.append(gram[inside] ^ np.uint64((k * 0x9E3779B97F4A7C15) & _MASK))
            owners.append(mine[inside])
    return np.concatenate(hashes), np.concatenate(owners)


class BenchmarkIndex:
    def __init__(self, n: int = 13):
        self.n = n
        self.rows: list[BenchmarkRow] = []
        self.lengths: set[int] = set()
        self._hashes: list[Any] = []
        self._owners: list[Any] = []
        self.sources: list[str] = []
        self._sorted = None

    def add(self, source: str, rows: Iterable[tuple[int, list[str]]]) -> int:
        """Index a source's rows: (row number, its texts), read in batches. Returns how many rows gave grams."""
        self.sources.append(source)
        before = len(self.rows)
        batch: list[tuple[int, list[str], list[list[str]]]] = []
        for number, texts in rows:
            segments = [w for w in (words(t) for t in texts) if len(w) >= MIN_WORDS]
            if segments:
                batch.append((number, texts, segments))
            if len(batch) >= BATCH_ROWS:
                self._add_batch(source, batch)
                batch = []
        if batch:
            self._add_batch(source, batch)
        self._sorted = None
        return len(self.rows) - before

    def _add_batch(self, source: str, batch) -> None:
        import numpy as np

        segments = [segment for _, _, row in batch for segment in row]
        row_of_segment = np.repeat(np.arange(len(batch)), [len(row) for _, _, row in batch])
        lengths = {min(len(s), self.n) for s in segments}
        grams, segment = segment_grams(segments, lengths, self.n, whole_short=True)
        rows = row_of_segment[segment]
        # one entry per distinct (row, gram)
        order = np.lexsort((grams, rows))
        grams, rows = grams[order], rows[order]
        keep = np.ones(len(grams), dtype=bool)
        keep[1:] = (grams[1:] != grams[:-1]) | (rows[1:] != rows[:-1])
        grams, rows = grams[keep], rows[keep]
        counts = np.bincount(rows, minlength=len(batch))
        first = len(self.rows)
        for i, (number, texts, _) in enumerate(batch):
            self.rows.append(BenchmarkRow(source, number, " ".join(texts[0].split())[:120], int(counts[i])))
        self.lengths |= lengths
        self._hashes.append(grams)
        self._owners.append(rows + first)

    def _index(self):
        import numpy as np

        if self._sorted is None:
            hashes = np.concatenate(self._hashes) if self._hashes else np.empty(0, dtype=np.uint64)
            owners = np.concatenate(self._owners) if self._owners else np.empty(0, dtype=np.int64)
            order = np.argsort(hashes, kind="stable")
            # A one-hash Bloom filter on the low bits: almost every training gram is ruled out by one lookup, and
            # only the rest go through the binary search.
            present = np.zeros(1 << FILTER_BITS, dtype=bool)
            present[(hashes & np.uint64((1 << FILTER_BITS) - 1)).astype(np.int64)] = True
            self._sorted = (hashes[order], owners[order], present)
        return self._sorted

    def scan(self, rows: Iterable[list[str]], threshold: float) -> ContaminationScan:
        """Training rows (each a list of its texts) against the index: the rows at or above `threshold`."""
        started = time.perf_counter()
        result = ContaminationScan(benchmark_rows=len(self.rows), sources=list(self.sources))
        batch: list[list[list[str]]] = []
        for texts in rows:
            batch.append([words(t) for t in texts])
            if len(batch) >= BATCH_ROWS:
                self._scan_batch(batch, result, threshold)
                batch = []
        if batch:
            self._scan_batch(batch, result, threshold)
        result.found.sort(key=lambda found: found.row)
        result.seconds = time.perf_counter() - started
        return result

    def _scan_batch(self, batch: list[list[list[str]]], result: ContaminationScan, threshold: float) -> None:
        import numpy as np

        first = result.rows
        result.rows += len(batch)
        hashes, owners, present = self._index()
        if not len(hashes):
            return
        segments = [segment for row in batch for segment in row]
        row_of_segment = np.repeat(np.arange(len(batch)), [len(row) for row in batch])
        grams, segment = segment_grams(segments, self.lengths, self.n, whole_short=False)
        if not len(grams):
            return
        train_rows = row_of_segment[segment]
        maybe = present[(grams & np.uint64((1 << FILTER_BITS) - 1)).astype(np.int64)]
        grams, train_rows = grams[maybe], train_rows[maybe]
        if not len(grams):
            return
        at = np.searchsorted(hashes, grams)
        at[at >= len(hashes)] = len(hashes) - 1
        hit = hashes[at] == grams
        if not hit.any():
            return
        found: dict[int, set[int]] = {}
        for gram, row in zip(grams[hit].tolist(), train_rows[hit].tolist()):
            found.setdefault(row, set()).add(gram)
        for row, row_grams in found.items():
            counts: Counter[int] = Counter()
            for gram in row_grams:
                lo = int(np.searchsorted(hashes, np.uint64(gram), side="left"))
                hi = int(np.searchsorted(hashes, np.uint64(gram), side="right"))
                counts.update(set(owners[lo:hi].tolist()))
            best = max(counts, key=lambda b: (counts[b] / self.rows[b].grams, -b))
            overlap = counts[best] / self.rows[best].grams
            if overlap >= threshold and overlap > 0:
                result.found.append(Contaminated(first + row, self.rows[best], round(overlap, 3)))
