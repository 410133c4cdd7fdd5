"""The built-in verifiable rewards: each scores a completion 0..1 (length: -1..0) from its text and the row's data.

Every function takes TRL's reward arguments (`completions`, plus the data's columns by name) and returns one float
per completion. A completion is a string (plain prompts) or a list of messages (chat prompts; the reply is the last
assistant message): `reply_text` reads both.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable

# Final-answer markers, strongest first: GSM8K's "#### 42", LaTeX's \boxed{42}, then "Answer: 42".
HASHES = re.compile(r"####\s*(.+)")
ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
NUMBER_WITH_COMMAS = re.compile(r"(?<=\d),(?=\d{3}\b)")
FENCED_JSON = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
# format's default: a <think>...</think> block, then an answer (DeepSeek-R1's layout)
THINK_THEN_ANSWER = r"<think>.+?</think>\s*\S.*"


def reply_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last message of a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content")
            return content if isinstance(content, str) else ""
    return ""


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in `text`, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


def final_answer(text: str) -> str:
    """The answer a reply gives: after its last `####`, inside its last `\\boxed{}`, after its last `Answer:`, or else
    the whole reply."""
    hashes = HASHES.findall(text)
    if hashes:
        return hashes[-1]
    inside = boxed(text)
    if inside is not None:
        return inside
    lines = ANSWER_LINE.findall(text)
    if lines:
        return lines[-1]
    return text


def normalize_answer(text: str) -> str:
    """Case, surrounding space, markup ($, **, quotes), a trailing period and thousands separators do not count;
    numbers compare by value (42, 42.0 and 42.00 are one answer)."""
    text = text.strip().strip("$*`\"' ").strip()
    text = re.sub(r"\s+", " ", text).rstrip(".!;, ").lower()
    text = NUMBER_WITH_COMMAS.sub("", text)
    try:
        number = float(text)
    except ValueError:
        return text
    if number != number or abs(number) == float("inf"):
        return text
    return str(int(number)) if number == int(number) else repr(number)


def exact_answer(column: str) -> Callable[..., list[float]]:
    def exact_answer(completions, **columns) -> list[float]:
        answers = columns[column]
        return [float(normalize_answer(final_answer(reply_text(c))) == normalize_answer(final_answer(str(a))))
                for c, a in zip(completions, answers)]

    return exact_answer


def _math_verify():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify times out through signal.alarm, which only the main thread may set (TRL does the same).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    def parse_text(text: str):
        return parse(text, extraction_config=config, parsing_timeout=timeout)

    return parse_text, lambda gold, answer: verify(gold, answer, timeout_seconds=timeout)


def parse_gold(parse_text, answer: Any):
    """A reference answer as math-verify reads it; plain expressions (x+1) are read as LaTeX math too."""
    text = str(answer)
    return parse_text(text) or parse_text(f"${text}$")


def math(column: str) -> Callable[..., list[float]]:
    parse_text, verify = _math_verify()

    def math(completions, **columns) -> list[float]:
        rewards = []
        for completion, answer in zip(completions, columns[column]):
            gold = parse_gold(parse_text, answer)
            given = parse_text(reply_text(completion))
            rewards.append(float(bool(given) and bool(verify(gold, given))))
        return rewards

    return math


def regex(pattern: str) -> Callable[..., list[float]]:
    compiled = re.compile(pattern, re.DOTALL | re.MULTILINE)

    def regex(completions, **_) -> list[float]:
        return [float(compiled.search(reply_text(c)) is not None) for c in completions]

    return regex


def format_reward(pattern: str | None) -> Callable[..., list[float]]:
    compiled = re.compile(pattern or THINK_THEN_ANSWER, re.DOTALL)

    def format(completions, **_) -> list[float]:  # noqa: A001 - the reward's name in metrics
        return [float(compiled.fullmatch(reply_text(c).strip()) is not None) for c in completions]

    return format


def json_value(text: str) -> tuple[bool, Any]:
    """(parsed, value) for a reply that is JSON, or holds one fenced ```json block."""
    fenced = FENCED_JSON.search(text)
    candidate = fenced.group(1) if fenced else text
    try:
        return True, json.loads(candidate.strip())
    except (ValueError, RecursionError):
        return False, None


def json_reward(schema: dict[str, Any] | None) -> Callable[..., list[float]]:
    validator = None
    if schema is not None:
        from jsonschema import validators

        validator = validators.validator_for(schema)(schema)

    def json(completions, **_) -> list[float]:  # noqa: A001 - the reward's name in metrics
        rewards = []
        for completion in completions:
            parsed, value = json_value(reply_text(completion))
            ok = parsed and (validator is None or validator.is_valid(value))
            rewards.append(float(ok))
        return rewards

    return json


def length(max_completion_length: int, soft_punish_cache: int | None) -> Callable[..., list[float]]:
    """DAPO's soft overlong penalty, as TRL implements it: 0 up to max_completion_length - cache, then a linear ramp
    to -1 at max_completion_length."""
    from trl.rewards import get_soft_overlong_punishment

    cache = soft_punish_cache or max(max_completion_length // 4, 1)
    penalty = get_soft_overlong_punishment(max_completion_length, min(cache, max_completion_length))

    def length(completions, completion_ids, **_) -> list[float]:
        return [float(value) for value in penalty(completion_ids)]

    return length
