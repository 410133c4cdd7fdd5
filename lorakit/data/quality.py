"""Screen a training set before it trains: duplicates, near-duplicates, eval rows seen in training, benchmark
contamination, and preference pairs whose two answers are the same.

One function over canonical rows (lorakit.data.formats / lorakit.data.preference) serves `lorakit data check` and
every training run. What it finds is reported (with row numbers and examples); what it drops is the recipe's choice:

- `data.dedup`: off | report (default: find, drop nothing) | exact (drop exact repeats, of earlier rows or of eval
  rows, and pairs whose answers are equal) | near (also drop near-duplicates at `data.dedup_threshold`);
- `data.decontaminate`: off | report (default) | drop (training rows that contain an eval or benchmark row).

The benchmark side is the run's eval data plus `data.contamination_against` (and `data check --against`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from lorakit.console import info, warn
from lorakit.data.benchmark_files import benchmark_rows
from lorakit.data.contamination import BenchmarkIndex, ContaminationScan
from lorakit.data.dedup import DuplicateFinder, DuplicateScan
from lorakit.data.texts import benchmark_segments, pair_answers, pair_segments, sft_segments, words

MAX_NAMED = 8  # rows named in one line of a message


@dataclass
class Screen:
    """What the screen found in one training set, and which of its rows (0-based) the recipe drops."""

    rows: int
    dedup: str
    decontaminate: str
    duplicates: DuplicateScan | None = None
    same_answers: list[int] = field(default_factory=list)  # preference rows whose chosen equals rejected
    contamination: ContaminationScan | None = None
    dropped: dict[int, str] = field(default_factory=dict)  # row -> why
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> list:
        return [m for m in self.duplicates.within if m.exact] if self.duplicates else []

    @property
    def near(self) -> list:
        return [m for m in self.duplicates.within if not m.exact] if self.duplicates else []

    @property
    def in_eval(self) -> list:
        return list(self.duplicates.against_eval) if self.duplicates else []

    @property
    def contaminated(self) -> list:
        return list(self.contamination.found) if self.contamination else []

    def counts(self) -> dict[str, int]:
        return {"exact_duplicates": len(self.exact), "near_duplicates": len(self.near),
                "eval_duplicates": len(self.in_eval), "same_answers": len(self.same_answers),
                "contaminated": len(self.contaminated), "dropped": len(self.dropped)}

    def record(self) -> dict[str, Any]:
        """The manifest's dataset.quality entry: settings, counts, and the dropped rows (1-based) by reason."""
        by_reason: dict[str, list[int]] = {}
        for row, why in sorted(self.dropped.items()):
            by_reason.setdefault(why, []).append(row + 1)
        return {**self.settings, **self.counts(), "dropped_rows": by_reason,
                "near_rows_checked": self.duplicates.near_rows if self.duplicates else 0,
                "benchmark_rows": self.contamination.benchmark_rows if self.contamination else 0,
                "against": self.contamination.sources if self.contamination else [],
                "seconds": round(self.seconds, 2)}

    def line(self, source: str) -> str | None:
        """One line for a run's log, or None when nothing was found."""
        counts = self.counts()
        found = [f"{counts[key]} {label}" for key, label in (
            ("exact_duplicates", "exact duplicate(s)"), ("near_duplicates", "near-duplicate(s)"),
            ("eval_duplicates", "repeat(s) of eval rows"), ("same_answers", "pair(s) with chosen = rejected"),
            ("contaminated", "row(s) containing an eval/benchmark row")) if counts[key]]
        if not found:
            return None
        rows = sorted({m.row for m in self.exact + self.near + self.in_eval} | set(self.same_answers)
                      | {c.row for c in self.contaminated})
        remedies = []
        if counts["exact_duplicates"] + counts["near_duplicates"] + counts["eval_duplicates"] + counts["same_answers"]:
            remedies.append("data.dedup: exact or near")
        if counts["contaminated"]:
            remedies.append("data.decontaminate: drop")
        action = (f"dropped {len(self.dropped)} row(s)" if self.dropped else
                  f"reported, not dropped ({' / '.join(remedies)} would drop them)")
        return f"Data quality: {source}: {', '.join(found)} (rows {named_rows(rows)}); {action}; details: " \
               f"lorakit data check {source}"


def named_rows(rows: Sequence[int]) -> str:
    """0-based rows as the 1-based numbers users see."""
    shown = ", ".join(str(r + 1) for r in rows[:MAX_NAMED])
    return shown + (f" and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else "")


def settings_of(data) -> dict[str, Any]:
    return {"dedup": data.dedup, "dedup_threshold": data.dedup_threshold, "dedup_ngram": data.dedup_ngram,
            "decontaminate": data.decontaminate, "contamination_ngram": data.contamination_ngram,
            "contamination_threshold": data.contamination_threshold}


def screen_rows(kind: str, train: Iterable[dict[str, Any]], data, evaluation: Iterable[dict[str, Any]] | None = None,
                eval_name: str = "eval data", against: Sequence[str] = (),
                progress: Callable[[str], None] | None = None) -> Screen:
    """Screen canonical rows (`kind`: sft, preference, or prompt: GRPO's prompts as one-turn chats) as `data` (a
    DataSection) says; `against`: benchmark files beyond data.contamination_against (`data check --against`).

    Prompts are checked for near-duplicates only with data.dedup: near: a GRPO prompt is a short question whose one
    changed word (a number, a country) is a different task, which word-shingle similarity cannot tell from a
    re-worded repeat (`What is 7 minus 5?` and `What is 7 minus 4?` share 0.78 of their bigrams)."""
    started = time.perf_counter()
    segments_of = pair_segments if kind == "preference" else sft_segments
    reference_of = _pair_reference if kind == "preference" else sft_segments
    train = list(train) if not isinstance(train, list) else train
    screen = Screen(rows=len(train), dedup=data.dedup, decontaminate=data.decontaminate, settings=settings_of(data))
    eval_rows = list(evaluation) if evaluation is not None else []
    if data.dedup != "off":
        if progress:
            progress("duplicates")
        near = kind != "prompt" or data.dedup == "near"
        finder = DuplicateFinder("near" if near else "exact", data.dedup_threshold, data.dedup_ngram)
        finder.add_eval(_joined_words(segments_of(row)) for row in eval_rows)
        screen.duplicates = finder.scan(_joined_words(segments_of(row)) for row in train)
        if kind == "preference":
            screen.same_answers = [i for i, row in enumerate(train) if _same_answers(row)]
    files = list(dict.fromkeys([*data.contamination_against, *against]))
    if data.decontaminate != "off" and (eval_rows or files):
        if progress:
            progress("contamination")
        index = BenchmarkIndex(data.contamination_ngram)
        if eval_rows:
            index.add(eval_name, ((i + 1, reference_of(row)) for i, row in enumerate(eval_rows)))
        for file in files:
            index.add(file, ((number, benchmark_segments(row)) for number, row in benchmark_rows(file)))
        screen.contamination = index.scan((segments_of(row) for row in train), data.contamination_threshold)
    screen.dropped = rows_to_drop(screen, data)
    screen.seconds = time.perf_counter() - started
    return screen


def rows_to_drop(screen: Screen, data) -> dict[int, str]:
    dropped: dict[int, str] = {}
    if data.dedup in ("exact", "near"):
        for match in screen.exact:
            dropped.setdefault(match.row, "exact duplicate")
        for match in screen.in_eval:
            if match.exact or data.dedup == "near":
                dropped.setdefault(match.row, "repeats an eval row")
        for row in screen.same_answers:
            dropped.setdefault(row, "chosen equals rejected")
    if data.dedup == "near":
        for match in screen.near:
            dropped.setdefault(match.row, "near-duplicate")
    if data.decontaminate == "drop":
        for found in screen.contaminated:
            dropped.setdefault(found.row, "contains an eval/benchmark row")
    return dropped


def _joined_words(segments: list[str]) -> list[str]:
    return [w for segment in segments for w in words(segment)]


def _pair_reference(row: dict[str, Any]) -> list[str]:
    """An eval pair as a benchmark row: its prompt and its chosen answer (the rejected one is what not to say)."""
    return [m["content"] for part in ("prompt", "chosen") for m in row.get(part) or []
            if m["role"] != "system" and m.get("content")]


def _same_answers(row: dict[str, Any]) -> bool:
    chosen, rejected = pair_answers(row)
    return bool(chosen) and chosen == rejected


def preview(texts: list[str], limit: int = 100) -> str:
    text = " | ".join(" ".join(t.split()) for t in texts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report_screen(screen: Screen, source: str) -> None:
    """The screen's one line in a run's log (a warning when it keeps what it found)."""
    line = screen.line(source)
    if line is None:
        return
    from rich.markup import escape

    (info if screen.dropped else warn)(escape(line))
