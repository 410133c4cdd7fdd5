"""Speed and memory of the data screen (lorakit.data.quality) on a large synthetic training set.

    python bench/data_screen.py                      # 100,000 chats against a 10,000-question benchmark
    python bench/data_screen.py --rows 20000 --benchmark 2000

Builds chats of 20-120 words from a Zipf-like vocabulary (replies of realistic length and word reuse), plants exact
copies, re-worded copies and benchmark questions at known rows, then times in one process, side by side:
- the near-duplicate check (MinHash LSH through datasketch) and the exact check;
- the contamination check (lorakit's sorted-hash n-gram index) against a plain Python set of 13-gram tuples (the
  straightforward way), on the same rows: rows/s of each, their ratio, and that both find the same rows.
Prints rows/s (per second of this process's CPU time, so a busy machine skews them less than wall time), the planted
rows found, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import random
import resource
import time


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def sentence(words: list[str], weights: list[float], rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(words, weights=weights, k=n))


def build(rows: int, benchmark: int, seed: int = 0):
    rng = random.Random(seed)
    words = vocabulary(20000, rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf: a few words are everywhere
    questions = [sentence(words, weights, rng, rng.randint(8, 30)) + "?" for _ in range(benchmark)]
    chats = []
    for _ in range(rows):
        chats.append({"messages": [
            {"role": "user", "content": sentence(words, weights, rng, rng.randint(8, 30)) + "?"},
            {"role": "assistant", "content": sentence(words, weights, rng, rng.randint(12, 90)) + "."}],
            "prompt": "", "completion": ""})
    planted = {"exact": [], "near": [], "contaminated": []}
    for k in range(50):  # every 1000th row or so: a copy, a re-worded copy, a benchmark question
        at = rng.randrange(rows // 2, rows)
        source = rng.randrange(0, rows // 2)
        kind = ("exact", "near", "contaminated")[k % 3]
        if kind == "exact":
            chats[at] = {**chats[source], "messages": [dict(m) for m in chats[source]["messages"]]}
        elif kind == "near":
            reply = chats[source]["messages"][1]["content"].split()
            reply[len(reply) // 2] = rng.choice(words)
            chats[at] = {**chats[source], "messages": [chats[source]["messages"][0],
                                                       {"role": "assistant", "content": " ".join(reply)}]}
        else:
            question = questions[rng.randrange(benchmark)]
            chats[at] = {**chats[at], "messages": [{"role": "user", "content": "Quiz: " + question},
                                                   chats[at]["messages"][1]]}
        planted[kind].append(at)
    return chats, questions, planted


def naive_contamination(train_texts, bench_texts, n: int = 13, min_words: int = 3) -> set[int]:
    """Every benchmark n-gram (or a short question whole) in a Python set of word tuples; each training row's
    windows of every needed length looked up one by one."""
    from lorakit.data.texts import words

    grams: dict[tuple, set] = {}
    lengths = set()
    for b, text in enumerate(bench_texts):
        w = words(text)
        if len(w) < min_words:
            continue
        k = min(len(w), n)
        lengths.add(k)
        for i in range(len(w) - k + 1):
            grams.setdefault(tuple(w[i:i + k]), set()).add(b)
    found = set()
    for row, segments in enumerate(train_texts):
        for segment in segments:
            w = words(segment)
            if any(tuple(w[i:i + k]) in grams for k in lengths for i in range(len(w) - k + 1)):
                found.add(row)
                break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--benchmark", type=int, default=10_000)
    args = parser.parse_args()

    from lorakit.config import DataSection
    from lorakit.data.contamination import BenchmarkIndex
    from lorakit.data.dedup import DuplicateFinder
    from lorakit.data.texts import sft_segments, words

    chats, questions, planted = build(args.rows, args.benchmark)
    data = DataSection()
    print(f"{args.rows:,} chats ({sum(len(words(' '.join(sft_segments(c)))) for c in chats) / len(chats):.0f} words "
          f"a row on average), {args.benchmark:,} benchmark questions; planted: "
          f"{', '.join(f'{len(v)} {k}' for k, v in planted.items())}")

    finder = DuplicateFinder("near", data.dedup_threshold, data.dedup_ngram)
    started = time.process_time()
    scan = finder.scan([w for s in sft_segments(c) for w in words(s)] for c in chats)
    dedup_seconds = time.process_time() - started
    exact = {m.row for m in scan.within if m.exact}
    near = {m.row for m in scan.within if not m.exact}
    print(f"duplicates (exact + MinHash LSH, {data.dedup_ngram}-word shingles, J>={data.dedup_threshold}): "
          f"{args.rows / dedup_seconds:,.0f} rows/s ({dedup_seconds:.1f} s); planted exact found "
          f"{len(exact & set(planted['exact']))}/{len(planted['exact'])}, near found "
          f"{len(near & set(planted['near']))}/{len(planted['near'])}; other rows flagged: "
          f"{len((exact | near) - set(planted['exact']) - set(planted['near']))}")

    train_texts = [sft_segments(c) for c in chats]
    started = time.process_time()
    index = BenchmarkIndex(data.contamination_ngram)
    index.add("benchmark", ((i + 1, [q]) for i, q in enumerate(questions)))
    result = index.scan(train_texts, 0.0)
    ours = time.process_time() - started
    found = {c.row for c in result.found}
    started = time.process_time()
    reference = naive_contamination(train_texts, questions, data.contamination_ngram)
    naive = time.process_time() - started
    print(f"contamination ({data.contamination_ngram}-grams): lorakit {args.rows / ours:,.0f} rows/s ({ours:.1f} s), "
          f"plain Python set of tuples {args.rows / naive:,.0f} rows/s ({naive:.1f} s): {naive / ours:.2f}x; "
          f"planted found {len(found & set(planted['contaminated']))}/{len(planted['contaminated'])}; "
          f"same rows as the plain version: {found == reference}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB "
          "(the synthetic rows themselves included)")


if __name__ == "__main__":
    main()
