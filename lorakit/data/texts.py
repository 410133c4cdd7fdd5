"""The text of a data row as the duplicate and contamination checks compare it: normalized words, by segment.

Normalization (NFKC, case-folded, every run of non-word characters one space) makes "Paris." and "paris" the same
word, as lm-eval's decontamination does. A row is split into segments (a user turn, a reply, a benchmark question)
so a short question is still matched whole; system prompts are left out (they repeat across rows by design).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
# Fields that hold a benchmark row's question or answer, by the names common sets use (lm-eval's own tasks, our
# question sets, GSM8K, ARC, MMLU, HellaSwag, TriviaQA, ...); a row with none of them contributes all its strings.
BENCHMARK_FIELDS = ("question", "prompt", "input", "instruction", "query", "problem", "text", "ctx", "context",
                    "goal", "sentence", "passage", "answer", "output", "response", "completion", "solution", "target",
                    "chosen")
CHAT_FIELDS = ("messages", "conversations")


# ASCII text (most rows) takes a translate table, several times faster than the regular expression.
ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum())})


def normalize(text: str) -> str:
    if text.isascii():
        return " ".join(text.lower().translate(ASCII_NON_WORD).split())
    return " ".join(NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def words(text: str) -> list[str]:
    if text.isascii():
        return text.lower().translate(ASCII_NON_WORD).split()
    return NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def sft_segments(row: dict[str, Any]) -> list[str]:
    """A canonical SFT row (lorakit.data.formats): its user, assistant and tool turns, or prompt and completion."""
    if row.get("messages"):
        return [m["content"] for m in row["messages"] if m["role"] != "system" and m.get("content")]
    return [text for text in (row.get("prompt") or "", row.get("completion") or "") if text.strip()]


def pair_segments(row: dict[str, Any]) -> list[str]:
    """A canonical preference row: the prompt's non-system turns, then the chosen and the rejected reply."""
    return [m["content"] for part in ("prompt", "chosen", "rejected") for m in row.get(part) or []
            if m["role"] != "system" and m.get("content")]


def pair_answers(row: dict[str, Any]) -> tuple[str, str]:
    """(chosen, rejected) replies of a canonical preference row, normalized."""
    return (" ".join(normalize(m.get("content") or "") for m in row.get("chosen") or []),
            " ".join(normalize(m.get("content") or "") for m in row.get("rejected") or []))


def benchmark_segments(row: Any) -> list[str]:
    """The question and answer texts of a benchmark row of any shape: a chat, the known question/answer fields (a
    multiple-choice answer given as an index counts only through its choices' texts), or else every string in it."""
    if isinstance(row, str):
        return [row] if row.strip() else []
    if not isinstance(row, dict):
        return list(_strings(row))
    for name in CHAT_FIELDS:
        value = row.get(name)
        if isinstance(value, list):
            found = [str(m.get("content") or m.get("value") or "") for m in value
                     if isinstance(m, dict) and m.get("role", m.get("from")) != "system"]
            found = [text for text in found if text.strip()]
            if found:
                return found
    known = [value for name in BENCHMARK_FIELDS for value in _strings(row.get(name))]
    if known:
        return known
    return list(_strings(row))


def _strings(value: Any, depth: int = 0) -> Iterable[str]:
    if depth > 8:
        return
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, depth + 1)
