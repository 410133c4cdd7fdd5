"""Exact and near-duplicate rows, within a training set and between it and its eval set.

- Exact: the same normalized text (lorakit.data.texts: case, punctuation and spacing ignored), by a 64-bit hash.
- Near: MinHash signatures of the rows' word n-gram sets (datasketch) and locality-sensitive hashing to find pairs
  whose estimated Jaccard similarity is at least the threshold (the BigCode/"Deduplicating training data" method,
  with shorter shingles because chat rows are short). It finds the same text with a few words changed, templated
  rows that differ in a detail, a reply re-worded in places; it does not find paraphrases that share few word runs.

Rows are streamed: per row the check keeps an 8-byte hash, and for the near check a MinHash signature in datasketch's
LSH index, for at most `max_near_rows` rows (beyond them only exact duplicates are looked for, and the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

NUM_PERM = 128  # signature length: the estimate's standard error at J=0.7 is about 0.04
MAX_NEAR_ROWS = 200_000  # about 1.3 GB of LSH index at most (measured ~6 KB a row on datasketch 2.0)


@dataclass(frozen=True)
class Match:
    """Row `row` repeats row `other` (0-based; `other_set` says of which set) with this similarity (1.0: exact)."""

    row: int
    other: int
    similarity: float
    other_set: str = "train"  # train | eval

    @property
    def exact(self) -> bool:
        return self.similarity >= 1.0


@dataclass
class DuplicateScan:
    within: list[Match] = field(default_factory=list)  # a later training row repeating an earlier one
    against_eval: list[Match] = field(default_factory=list)  # a training row repeating an eval row
    rows: int = 0
    near_rows: int = 0  # rows the near check covered (all of them, up to MAX_NEAR_ROWS)
    seconds: float = 0.0


def shingles(tokens: list[str], n: int) -> list[bytes]:
    if len(tokens) <= n:
        return [" ".join(tokens).encode()] if tokens else []
    return [" ".join(tokens[i:i + n]).encode() for i in range(len(tokens) - n + 1)]


def _hash64(text: str) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(text.encode())


class DuplicateFinder:
    """Index a reference set (the eval rows), then scan the training rows against it and against themselves."""

    def __init__(self, mode: str, threshold: float, ngram: int, max_near_rows: int = MAX_NEAR_ROWS):
        self.near = mode == "near"
        self.threshold = threshold
        self.ngram = ngram
        self.max_near_rows = max_near_rows
        self.eval_exact: dict[int, int] = {}
        self.eval_lsh = None
        self.eval_signatures: dict[int, object] = {}  # index -> MinHash hash values
        if self.near:
            import xxhash
            from datasketch import MinHash, MinHashLSH

            self._template = MinHash(num_perm=NUM_PERM, hashfunc=xxhash.xxh32_intdigest)
            self._lsh_class = MinHashLSH

    def _signature(self, tokens: list[str]):
        signature = self._template.copy()
        signature.update_batch(shingles(tokens, self.ngram))
        return signature

    def _new_lsh(self):
        # Banding tuned against misses (false-negative weight 0.9): every candidate's signature is compared anyway,
        # so a false candidate costs a comparison, a miss costs a duplicate left in.
        return self._lsh_class(threshold=self.threshold, num_perm=NUM_PERM, weights=(0.1, 0.9))

    def add_eval(self, texts: Iterable[list[str]]) -> None:
        """The eval rows, as word lists (lorakit.data.texts.words of their joined segments)."""
        if self.near:
            self.eval_lsh = self._new_lsh()
        for index, tokens in enumerate(texts):
            if not tokens:
                continue
            self.eval_exact.setdefault(_hash64(" ".join(tokens)), index)
            if self.near and index < self.max_near_rows:
                signature = self._signature(tokens)
                self.eval_signatures[index] = signature.hashvalues
                self.eval_lsh.insert(index, signature, check_duplication=False)

    def scan(self, texts: Iterable[list[str]]) -> DuplicateScan:
        import time

        started = time.perf_counter()
        result = DuplicateScan()
        seen: dict[int, int] = {}
        lsh = self._new_lsh() if self.near else None
        signatures: dict[int, object] = {}
        for index, tokens in enumerate(texts):
            result.rows += 1
            if not tokens:
                continue
            key = _hash64(" ".join(tokens))
            if key in self.eval_exact:
                result.against_eval.append(Match(index, self.eval_exact[key], 1.0, "eval"))
            first = seen.setdefault(key, index)
            if first != index:
                result.within.append(Match(index, first, 1.0))
                continue  # an exact copy is not also reported as a near one
            if lsh is None or index >= self.max_near_rows:
                continue
            signature = self._signature(tokens)
            if self.eval_lsh is not None and key not in self.eval_exact:
                best = self._best(signature, self.eval_lsh.query(signature), self.eval_signatures)
                if best is not None:
                    result.against_eval.append(Match(index, best[0], best[1], "eval"))
            best = self._best(signature, lsh.query(signature), signatures)
            if best is not None:
                result.within.append(Match(index, best[0], best[1]))
            lsh.insert(index, signature, check_duplication=False)
            signatures[index] = signature.hashvalues
        result.near_rows = min(result.rows, self.max_near_rows) if self.near else 0
        result.seconds = time.perf_counter() - started
        return result

    def _best(self, signature, candidates, signatures) -> tuple[int, float] | None:
        """The most similar candidate at or above the threshold (LSH candidates include some below it)."""
        import numpy as np

        mine = signature.hashvalues
        scored = [(float(np.count_nonzero(mine == signatures[c])) / NUM_PERM, c) for c in candidates]
        scored = [(j, c) for j, c in scored if j >= self.threshold]
        if not scored:
            return None
        similarity, other = max(scored, key=lambda item: (item[0], -item[1]))
        return other, round(min(similarity, 0.999), 3)
