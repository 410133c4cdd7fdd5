"""Detect a supervised dataset's format and convert every row to one canonical shape.

Canonical rows are either a conversation, `{"messages": [...], "train_from": i}` (assistant turns at index >= i carry
the loss), or raw text, `{"prompt": str, "completion": str}` (only the completion carries the loss; an empty prompt
means plain language modelling). Problems are collected for every row and reported together, by row number.
"""

from __future__ import annotations

from typing import Any, Callable

from lorakit.errors import DataError

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}

# Which columns identify which format, in the order they are tried.
SFT_SIGNATURES: list[tuple[str, set[str]]] = [
    ("messages", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("alpaca", {"instruction", "output"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("text", {"text"}),
]

MAX_REPORTED = 5


class RowProblem(ValueError):
    """A problem with one row, reported with its row number."""


def rename_columns(dataset, columns: dict[str, str], source: str):
    """Apply data.columns ({lorakit name: your column}) so detection sees lorakit's names."""
    present = set(dataset.column_names)
    missing = [theirs for theirs in columns.values() if theirs not in present]
    if missing:
        raise DataError(
            f"{source}: data.columns names column(s) {', '.join(repr(m) for m in missing)} that the data lacks",
            hint=f"the columns are: {', '.join(dataset.column_names)}",
        )
    mapping = {theirs: ours for ours, theirs in columns.items() if theirs != ours}
    return dataset.rename_columns(mapping) if mapping else dataset


def detect_format(column_names: list[str], signatures: list[tuple[str, set[str]]], source: str) -> str:
    present = set(column_names)
    for name, required in signatures:
        if required <= present:
            return name
    expected = "; ".join(f"{name}: {', '.join(sorted(req))}" for name, req in signatures)
    hint = f"expected one of ({expected}); map your columns with data.columns or set data.format"
    if {"chosen", "rejected"} <= present and not any("chosen" in req for _, req in signatures):
        hint = ("these are preference pairs: train on them with `lorakit dpo`, or check them with "
                "`lorakit data check FILE --stage dpo`")
    raise DataError(f"{source}: cannot tell the data format from columns {sorted(present)}", hint=hint)


def require_columns(column_names: list[str], fmt: str, signatures: list[tuple[str, set[str]]], source: str) -> None:
    required = dict(signatures)[fmt]
    missing = sorted(required - set(column_names))
    if missing:
        raise DataError(
            f"{source}: format '{fmt}' needs column(s) {', '.join(missing)}; the data has {sorted(column_names)}",
            hint="map your columns with data.columns, or fix data.format",
        )


def convert_rows(dataset, converter: Callable[[dict[str, Any]], dict[str, Any]], source: str, what: str):
    """Map `converter` over all rows; gather every row's problem and raise them together."""

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        try:
            return {**converter(row), "_problem": None}
        except RowProblem as exc:
            return {**converter_placeholder, "_problem": f"row {index + 1}: {exc}"}

    # datasets needs every row to return the same columns; learn them from the first convertible row.
    converter_placeholder: dict[str, Any] = {}
    for row in dataset.select(range(min(len(dataset), 50))):
        try:
            converter_placeholder = {k: _empty_like(v) for k, v in converter(row).items()}
            break
        except RowProblem:
            continue
    if not converter_placeholder:
        # Every sampled row is broken: report those directly.
        problems = []
        for index, row in enumerate(dataset.select(range(min(len(dataset), MAX_REPORTED)))):
            try:
                converter(row)
            except RowProblem as exc:
                problems.append(f"row {index + 1}: {exc}")
        raise DataError(f"{source}: no usable {what} rows; " + "; ".join(problems), hint=_fix_hint(what))
    converted = dataset.map(convert, with_indices=True, remove_columns=dataset.column_names, desc=None)
    problems = [p for p in converted["_problem"] if p]
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{source}: {len(problems)} bad row{'s' if len(problems) > 1 else ''}: {shown}{more}",
                        hint=_fix_hint(what))
    return converted.remove_columns("_problem")


def _fix_hint(what: str) -> str:
    return f"fix or remove those rows; `lorakit data check FILE` lists every problem in the {what} data"


def _empty_like(value: Any) -> Any:
    if isinstance(value, str):
        return ""
    if isinstance(value, list):
        return []
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0
    return value


# ---------------------------------------------------------------------------------------------------------------
# Supervised formats


def sft_converter(fmt: str, system_prompt: str | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def with_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": system_prompt}] + messages
        return messages

    def chat(messages: list[dict[str, str]], train_from: int = 0) -> dict[str, Any]:
        full = with_system(messages)
        check_conversation(full)
        return {"messages": full, "train_from": train_from + len(full) - len(messages), "prompt": "", "completion": ""}

    def raw(prompt: str, completion: str) -> dict[str, Any]:
        return {"messages": [], "train_from": 0, "prompt": prompt, "completion": completion}

    if fmt == "messages":
        return lambda row: chat(parse_messages(row["messages"], "messages"))
    if fmt == "sharegpt":
        return lambda row: chat(parse_sharegpt(row["conversations"]))
    if fmt == "alpaca":

        def alpaca(row: dict[str, Any]) -> dict[str, Any]:
            instruction = text_field(row, "instruction")
            extra = row.get("input") or ""
            if not isinstance(extra, str):
                raise RowProblem("'input' must be text")
            user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": text_field(row, "output")}]
            if isinstance(row.get("system"), str) and row["system"].strip():
                messages.insert(0, {"role": "system", "content": row["system"]})
            return chat(messages)

        return alpaca
    if fmt == "prompt_completion":

        def prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, str) and isinstance(completion, str):
                if not completion.strip():
                    raise RowProblem("'completion' is empty")
                return raw(prompt, completion)
            if isinstance(prompt, list) and isinstance(completion, list):
                prompt_messages = parse_messages(prompt, "prompt")
                completion_messages = parse_messages(completion, "completion")
                if not any(m["role"] == "assistant" for m in completion_messages):
                    raise RowProblem("'completion' has no assistant message")
                return chat(prompt_messages + completion_messages, train_from=len(prompt_messages))
            raise RowProblem("'prompt' and 'completion' must both be text or both be message lists")

        return prompt_completion
    if fmt == "text":
        return lambda row: raw("", text_field(row, "text"))
    raise DataError(f"data.format '{fmt}' is not a supervised format",
                    hint="use messages, sharegpt, alpaca, prompt_completion or text")


def text_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        raise RowProblem(f"'{name}' is missing")
    if not isinstance(value, str):
        raise RowProblem(f"'{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem(f"'{name}' is empty")
    return value


def parse_messages(value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem(f"'{field}' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowProblem(f"{field}[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowProblem(f"{field}[{i}].role {role!r} is not one of system, user, assistant")
        if not isinstance(content, str):
            raise RowProblem(f"{field}[{i}].content must be text")
        messages.append({"role": role, "content": content})
    return messages


def parse_sharegpt(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("'conversations' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowProblem(f"conversations[{i}] must be an object with from and value")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise RowProblem(f"conversations[{i}].from {speaker!r} is not human, gpt or system")
        if not isinstance(content, str):
            raise RowProblem(f"conversations[{i}].value must be text")
        messages.append({"role": role, "content": content})
    return messages


def check_conversation(messages: list[dict[str, str]]) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("no assistant turn to learn from")
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and not message["content"].strip():
            raise RowProblem(f"assistant turn {i} is empty")
        if message["role"] == "system" and i != 0:
            raise RowProblem(f"system message at position {i}; it must come first")


def load_sft_examples(loaded, fmt: str, columns: dict[str, str], system_prompt: str | None):
    """Loaded rows -> (canonical dataset, detected format)."""
    dataset = rename_columns(loaded.dataset, columns, loaded.source)
    if fmt == "auto":
        fmt = detect_format(dataset.column_names, SFT_SIGNATURES, loaded.source)
    elif fmt not in dict(SFT_SIGNATURES):
        raise DataError(f"data.format '{fmt}' is a preference format, not a supervised one",
                        hint="use it with `lorakit dpo`, or set data.format to auto")
    else:
        require_columns(dataset.column_names, fmt, SFT_SIGNATURES, loaded.source)
    converted = convert_rows(dataset, sft_converter(fmt, system_prompt), loaded.source, "supervised")
    return converted, fmt
