"""Detect a supervised dataset's format and convert every row to one canonical shape.

Canonical rows are either a conversation, `{"messages": [...], "train_from": i}` (assistant turns at index >= i carry
the loss), or raw text, `{"prompt": str, "completion": str}` (only the completion carries the loss; an empty prompt
means plain language modelling). Problems are collected for every row and reported together, by row number.

Tool calling is part of the conversation format, as OpenAI, TRL and axolotl write it: a row (or data.tools, for every
row) offers `tools` (function specs), assistant messages carry `tool_calls`, and `tool` messages carry the results
(`tool_call_id`, `name`). Messages stay `{"role", "content"}`; what else a message carries (tool calls, the id and
name of a result, reasoning) is kept as JSON in the row's `extras` (one object per message) and the row's tools in
`tools`, because Arrow would otherwise merge the differently-shaped argument objects of different rows.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from lorakit.errors import DataError

ROLES = {"system", "user", "assistant"}
TOOL_ROLES = ROLES | {"tool"}
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
    # LLaMA-Factory's tool-calling ShareGPT: a call is a JSON {"name", "arguments"} turn, its result an observation
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
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


def sft_converter(fmt: str, system_prompt: str | None,
                  tools: list[dict[str, Any]] | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`tools`: the dataset-wide tool specs (data.tools), offered in rows without a `tools` column of their own."""

    def with_system(messages: list[dict[str, str]], extras: list[dict[str, Any]]):
        if system_prompt and not (messages and messages[0]["role"] == "system"):
            return [{"role": "system", "content": system_prompt}] + messages, [{}] + extras
        return messages, extras

    def chat(messages: list[dict[str, str]], train_from: int = 0, extras: list[dict[str, Any]] | None = None,
             row: dict[str, Any] | None = None) -> dict[str, Any]:
        extras = extras if extras is not None else [{} for _ in messages]
        full, full_extras = with_system(messages, extras)
        row_tools = parse_tools(row.get("tools"), "tools") if row is not None and row.get("tools") is not None \
            else tools
        check_conversation(full, full_extras, row_tools)
        return {"messages": full, "train_from": train_from + len(full) - len(messages), "prompt": "", "completion": "",
                "extras": json.dumps(full_extras) if any(full_extras) else "",
                "tools": json.dumps(row_tools) if row_tools else ""}

    def raw(prompt: str, completion: str) -> dict[str, Any]:
        return {"messages": [], "train_from": 0, "prompt": prompt, "completion": completion, "extras": "",
                "tools": ""}

    def messages_row(row: dict[str, Any]) -> dict[str, Any]:
        extras: list[dict[str, Any]] = []
        return chat(parse_messages(row["messages"], "messages", extras), extras=extras, row=row)

    def sharegpt_row(row: dict[str, Any]) -> dict[str, Any]:
        extras: list[dict[str, Any]] = []
        return chat(parse_sharegpt(row["conversations"], extras), extras=extras, row=row)

    if fmt == "messages":
        return messages_row
    if fmt == "sharegpt":
        return sharegpt_row
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
                prompt_extras: list[dict[str, Any]] = []
                completion_extras: list[dict[str, Any]] = []
                prompt_messages = parse_messages(prompt, "prompt", prompt_extras)
                completion_messages = parse_messages(completion, "completion", completion_extras)
                if not any(m["role"] == "assistant" for m in completion_messages):
                    raise RowProblem("'completion' has no assistant message")
                return chat(prompt_messages + completion_messages, train_from=len(prompt_messages),
                            extras=prompt_extras + completion_extras, row=row)
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


def parse_messages(value: Any, field: str, extras: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """Messages as {"role", "content"}. With `extras` (a list to fill, one object per message), tool messages,
    assistant `tool_calls` and reasoning are accepted and kept there; without it (preference data) they are refused."""
    if not isinstance(value, list) or not value:
        raise RowProblem(f"'{field}' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowProblem(f"{field}[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        roles = TOOL_ROLES if extras is not None else ROLES
        if role not in roles:
            raise RowProblem(f"{field}[{i}].role {role!r} is not one of {', '.join(sorted(roles))}")
        extra: dict[str, Any] = {}
        if message.get("tool_calls") is not None:
            if extras is None:
                raise RowProblem(f"{field}[{i}] has tool_calls: tool calling is supported in supervised (sft) data")
            if role != "assistant":
                raise RowProblem(f"{field}[{i}] is a {role} message with tool_calls; only assistant messages call tools")
            extra["tool_calls"] = parse_tool_calls(message["tool_calls"], f"{field}[{i}].tool_calls")
        if role == "tool":
            content = tool_result_text(content, f"{field}[{i}].content")
            for key in ("tool_call_id", "name"):
                if message.get(key) is not None:
                    if not isinstance(message[key], str) or not message[key].strip():
                        raise RowProblem(f"{field}[{i}].{key} must be a non-empty string")
                    extra[key] = message[key]
        for key in ("reasoning_content", "thinking"):
            if message.get(key) is not None and extras is not None:
                if role != "assistant" or not isinstance(message[key], str):
                    raise RowProblem(f"{field}[{i}].{key} must be text on an assistant message")
                if message[key].strip():
                    extra["reasoning_content"] = message[key]
        if content is None and "tool_calls" in extra:
            content = ""  # a turn that only calls tools
        if not isinstance(content, str):
            raise RowProblem(f"{field}[{i}].content must be text")
        messages.append({"role": role, "content": content})
        if extras is not None:
            extras.append(extra)
    return messages


def tool_result_text(content: Any, where: str) -> str:
    """A tool result is text; a JSON value (object, list, number) is written as JSON, as OpenAI clients send it."""
    if isinstance(content, str):
        return content
    if content is None:
        raise RowProblem(f"{where} is missing: a tool message carries the tool's result")
    return json.dumps(content, ensure_ascii=False)


def parse_tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI tool calls -> [{"type": "function", "id"?, "function": {"name", "arguments": dict}}].

    Arguments given as a JSON string (OpenAI's wire format) are decoded: chat templates expect a mapping (GLM raises
    otherwise, Qwen would write the string with quotes around it).
    """
    if not isinstance(value, list) or not value:
        raise RowProblem(f"{where} must be a non-empty list of calls")
    calls = []
    for j, call in enumerate(value):
        if not isinstance(call, dict):
            raise RowProblem(f"{where}[{j}] must be an object with a function")
        function = call.get("function", call)  # the flat {"name", "arguments"} form is accepted too
        if not isinstance(function, dict):
            raise RowProblem(f"{where}[{j}].function must be an object with name and arguments")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RowProblem(f"{where}[{j}].function.name is missing")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise RowProblem(f"{where}[{j}].function.arguments is not valid JSON") from None
        if not isinstance(arguments, dict):
            raise RowProblem(f"{where}[{j}].function.arguments must be a JSON object, got {type(arguments).__name__}")
        parsed: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id") is not None:
            if not isinstance(call["id"], str):
                raise RowProblem(f"{where}[{j}].id must be a string")
            parsed["id"] = call["id"]
        calls.append(parsed)
    return calls


def parse_tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """OpenAI tool specs ([{"type": "function", "function": {"name", "description", "parameters"}}]; the flat
    {"name", "description", "parameters"} form and a JSON string of either are accepted)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError:
            raise RowProblem(f"'{where}' is not valid JSON") from None
    if not isinstance(value, list):
        raise RowProblem(f"'{where}' must be a list of tool specs")
    tools = []
    for j, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise RowProblem(f"{where}[{j}] must be an object")
        function = tool.get("function", tool)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowProblem(f"{where}[{j}] has no function name")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise RowProblem(f"{where}[{j}].parameters must be a JSON schema object")
        tools.append({"type": tool.get("type", "function"), "function": function})
    return tools or None


def parse_sharegpt(value: Any, extras: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("'conversations' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowProblem(f"conversations[{i}] must be an object with from and value")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None or (role == "tool" and extras is None):
            raise RowProblem(f"conversations[{i}].from {speaker!r} is not human, gpt or system")
        extra: dict[str, Any] = {}
        if str(speaker).lower() == "function_call":
            try:
                call = json.loads(content) if isinstance(content, str) else content
            except ValueError:
                raise RowProblem(f"conversations[{i}].value of a function_call is not valid JSON") from None
            extra["tool_calls"] = parse_tool_calls(call if isinstance(call, list) else [call],
                                                   f"conversations[{i}].value")
            content = ""
        elif role == "tool":
            content = tool_result_text(content, f"conversations[{i}].value")
        if not isinstance(content, str):
            raise RowProblem(f"conversations[{i}].value must be text")
        messages.append({"role": role, "content": content})
        if extras is not None:
            extras.append(extra)
    return messages


def check_conversation(messages: list[dict[str, str]], extras: list[dict[str, Any]] | None = None,
                       tools: list[dict[str, Any]] | None = None) -> None:
    extras = extras or [{} for _ in messages]
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("no assistant turn to learn from")
    offered = {t["function"]["name"] for t in tools} if tools else None
    pending: list[dict[str, Any]] = []  # the calls of the latest assistant turn, answered by the tool messages after it
    for i, (message, extra) in enumerate(zip(messages, extras)):
        calls = extra.get("tool_calls", [])
        if message["role"] == "assistant":
            if not message["content"].strip() and not calls:
                raise RowProblem(f"assistant turn {i} is empty")
            for call in calls:
                name = call["function"]["name"]
                if offered is not None and name not in offered:
                    raise RowProblem(f"assistant turn {i} calls {name!r}, which is not among the tools offered "
                                     f"({', '.join(sorted(offered))})")
            pending = list(calls)
        elif message["role"] == "tool":
            if not pending and not (i and messages[i - 1]["role"] == "tool"):
                raise RowProblem(f"tool message {i} answers no tool call (it must follow an assistant turn with "
                                 "tool_calls)")
            call_id = extra.get("tool_call_id")
            ids = {c.get("id") for c in pending if c.get("id")}
            if call_id and ids and call_id not in ids:
                raise RowProblem(f"tool message {i} answers tool_call_id {call_id!r}, which no preceding call has "
                                 f"({', '.join(sorted(ids))})")
        else:
            pending = []
        if message["role"] == "system" and i != 0:
            raise RowProblem(f"system message at position {i}; it must come first")


def template_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A canonical row's messages in the shape chat templates read (tool calls, tool ids, reasoning merged back).

    Reasoning is passed under both names templates use: `reasoning_content` (Qwen3, GLM, DeepSeek) and `thinking`
    (gpt-oss harmony, LFM2.5).
    """
    extras = json.loads(row["extras"]) if row.get("extras") else [{} for _ in row["messages"]]
    messages = []
    for message, extra in zip(row["messages"], extras):
        merged = {"role": message["role"], "content": message["content"], **extra}
        if "reasoning_content" in extra:
            merged["thinking"] = extra["reasoning_content"]
        messages.append(merged)
    return messages


def row_tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    return json.loads(row["tools"]) if row.get("tools") else None


def load_sft_examples(loaded, fmt: str, columns: dict[str, str], system_prompt: str | None,
                      tools: list[dict[str, Any]] | None = None):
    """Loaded rows -> (canonical dataset, detected format). `tools`: data.tools, already read (see load_tools)."""
    dataset = rename_columns(loaded.dataset, columns, loaded.source)
    if fmt == "auto":
        fmt = detect_format(dataset.column_names, SFT_SIGNATURES, loaded.source)
    elif fmt not in dict(SFT_SIGNATURES):
        stage = "grpo" if fmt == "prompt" else "dpo"
        raise DataError(f"data.format '{fmt}' is a {'prompt' if stage == 'grpo' else 'preference'} format, not a "
                        "supervised one", hint=f"use it with `lorakit {stage}`, or set data.format to auto")
    else:
        require_columns(dataset.column_names, fmt, SFT_SIGNATURES, loaded.source)
    converted = convert_rows(dataset, sft_converter(fmt, system_prompt, tools), loaded.source, "supervised")
    return converted, fmt


def load_tools(value: str | list | None) -> list[dict[str, Any]] | None:
    """data.tools: a JSON file of tool specs, or the specs themselves (a list in the recipe)."""
    from pathlib import Path

    if value is None:
        return None
    where = "data.tools"
    if isinstance(value, str) and not value.lstrip().startswith("["):
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(f"data.tools file {path} not found", hint="give a JSON file holding a list of tool specs")
        value, where = path.read_text(), str(path)
    try:
        return parse_tools(value, where)
    except RowProblem as exc:
        raise DataError(f"{exc}", hint='write tools as [{"type": "function", "function": {"name": ..., '
                                      '"description": ..., "parameters": {...}}}]') from None
