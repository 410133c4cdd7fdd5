"""Prompt-only data for GRPO: detect the format, convert every row to a chat prompt, keep the other columns for the
rewards, and check everything a run would trip over before any weights load.

Formats: `messages` (a conversation whose last turn is the user's), `prompt` (a string, or a list of messages), and
alpaca's `instruction` (+ `input`). Canonical rows are `{"prompt": [messages], <every other column>}`, TRL's
conversational prompt format: GRPOTrainer renders them with the run's chat template, exactly as the SFT stage
rendered its chats, and passes the other columns (`answer`, `solution`, `tests`, ...) to the reward functions by
name. A hidden `lorakit_row` column carries each row's number in its file, so a reward error can name it.

Checked here, all rows at once: rows without a prompt (or with an empty last user turn), prompts the chat template
refuses, prompts too long to leave room for `grpo.max_completion_length` within `data.max_length`, and, for each
reward, the columns it reads (lorakit.rewards).
"""

from __future__ import annotations

from typing import Any, Callable

from lorakit.chat_template import TemplateRenderError, render
from lorakit.config import DataSection
from lorakit.data.checks import refusal_hint, row_numbers
from lorakit.data.formats import RowProblem, convert_rows, detect_format, parse_messages, rename_columns, text_field
from lorakit.data.load import load_rows
from lorakit.data.prepared import PreparedData, first_kept, tokenize_with_eval
from lorakit.data.quality import Screen, report_screen, screen_rows, settings_of
from lorakit.errors import DataError

# The hidden column that carries each prompt's row number in its data file, so an error can name the row.
ROW_COLUMN = "lorakit_row"

PROMPT_SIGNATURES: list[tuple[str, set[str]]] = [
    ("messages", {"messages"}),
    ("prompt", {"prompt"}),
    ("alpaca", {"instruction"}),
]
# The columns each format turns into the prompt; every other column is passed to the rewards.
FORMAT_COLUMNS = {"messages": {"messages"}, "prompt": {"prompt"}, "alpaca": {"instruction", "input", "system"}}


def prompt_converter(fmt: str, system_prompt: str | None):
    def finish(messages: list[dict[str, str]]) -> dict[str, Any]:
        if messages[-1]["role"] != "user":
            raise RowProblem(f"the last turn is the {messages[-1]['role']}'s: a prompt ends with the user's turn "
                             "(GRPO samples the reply)")
        if not messages[-1]["content"].strip():
            raise RowProblem("the prompt (the last user turn) is empty")
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        return {"prompt": messages}

    def messages_row(row: dict[str, Any]) -> dict[str, Any]:
        return finish(parse_messages(row.get("messages"), "messages"))

    def prompt_row(row: dict[str, Any]) -> dict[str, Any]:
        value = row.get("prompt")
        if isinstance(value, str) or value is None:
            return finish([{"role": "user", "content": text_field(row, "prompt")}])
        return finish(parse_messages(value, "prompt"))

    def alpaca_row(row: dict[str, Any]) -> dict[str, Any]:
        instruction = text_field(row, "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise RowProblem("'input' must be text")
        messages = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages.insert(0, {"role": "system", "content": row["system"]})
        return finish(messages)

    converters = {"messages": messages_row, "prompt": prompt_row, "alpaca": alpaca_row}
    if fmt not in converters:
        raise DataError(f"data.format '{fmt}' is not a prompt format",
                        hint="GRPO reads prompts: messages (ending with the user's turn), prompt, or alpaca "
                             "(instruction/input); or set data.format to auto")
    return converters[fmt]


def load_prompt_rows(loaded, fmt: str, columns: dict[str, str], system_prompt: str | None):
    """Loaded rows -> (dataset of chat prompts + the other columns + lorakit_row, detected format)."""
    dataset = rename_columns(loaded.dataset, columns, loaded.source)
    if fmt == "auto":
        fmt = detect_format(dataset.column_names, PROMPT_SIGNATURES, loaded.source)
    elif fmt not in dict(PROMPT_SIGNATURES):
        raise DataError(f"data.format '{fmt}' is not a prompt format",
                        hint="GRPO reads messages, prompt or alpaca rows; or set data.format to auto")
    elif not dict(PROMPT_SIGNATURES)[fmt] <= set(dataset.column_names):
        raise DataError(f"{loaded.source}: format '{fmt}' needs column(s) "
                        f"{', '.join(sorted(dict(PROMPT_SIGNATURES)[fmt] - set(dataset.column_names)))}; the data has "
                        f"{sorted(dataset.column_names)}", hint="map your columns with data.columns, or fix data.format")
    if ROW_COLUMN in dataset.column_names:
        raise DataError(f"{loaded.source}: the column name '{ROW_COLUMN}' is lorakit's own", hint="rename that column")
    prompts = convert_rows(dataset, prompt_converter(fmt, system_prompt), loaded.source, "prompt")
    for name in dataset.column_names:
        if name not in FORMAT_COLUMNS[fmt]:
            prompts = prompts.add_column(name, dataset[name])
    return prompts.add_column(ROW_COLUMN, list(range(1, len(prompts) + 1))), fmt


def prompt_lengths(prompts: list[list[dict[str, str]]], tokenizer) -> tuple[list[int], list[str]]:
    """Tokens of each prompt as GRPO feeds it (chat template + generation prompt), and why a template refused any."""
    lengths, errors = [], []
    for messages in prompts:
        try:
            text = render(tokenizer, messages, add_generation_prompt=True)
        except TemplateRenderError as exc:
            lengths.append(0)
            errors.append(str(exc))
            continue
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        errors.append("")
    return lengths, errors


def check_prompts(dataset, lengths: list[int], errors: list[str], source: str, max_length: int,
                  max_completion_length: int) -> None:
    rows = dataset[ROW_COLUMN]
    refused = [rows[i] - 1 for i, e in enumerate(errors) if e]
    if refused:
        first = next(e for e in errors if e)
        raise DataError(f"{source}: the chat template refuses {len(refused)} prompt(s) (rows {row_numbers(refused)}): {first}",
                        hint=refusal_hint(first))
    room = max_length - max_completion_length
    long = [i for i, n in enumerate(lengths) if n > room]
    if long:
        worst = max(lengths[i] for i in long)
        raise DataError(
            f"{source}: {len(long)} prompt(s) leave no room for grpo.max_completion_length={max_completion_length} "
            f"within data.max_length={max_length} (rows {row_numbers([rows[i] - 1 for i in long])}; the longest has "
            f"{worst} tokens, at most {max(room, 0)} fit)",
            hint=f"raise data.max_length to {worst + max_completion_length}, lower grpo.max_completion_length, or "
                 "shorten those prompts")


def columns_table(dataset) -> dict[str, list[Any]]:
    """The columns rewards may read, by name (everything but the prompt and lorakit's own)."""
    return {name: dataset[name] for name in dataset.column_names if name not in ("prompt", "prompt_length", ROW_COLUMN)}


# (dataset, source) -> None: the caller's checks of the rows against what reads them (the rewards)
RowCheck = Callable[[Any, str], None]


def load_prompt_source(source: str, data: DataSection, tokenizer, max_completion_length: int,
                       check_rows: RowCheck | None = None, max_rows: int | None = None):
    """One prompt file -> (dataset, format, fingerprint, was_cached), every check made."""
    loaded = load_rows(source, data.subset, data.split, max_rows)
    dataset, fmt = load_prompt_rows(loaded, data.format, data.columns, data.system_prompt)
    if check_rows is not None:
        check_rows(dataset, source)
    lengths, errors = prompt_lengths(dataset["prompt"], tokenizer)
    check_prompts(dataset, lengths, errors, source, data.max_length, max_completion_length)
    return dataset.add_column("prompt_length", lengths), fmt, loaded.fingerprint, False


def canonical_prompts(source: str, data: DataSection, max_rows: int | None = None) -> list[dict[str, Any]]:
    """A prompt file's rows as `{"prompt": [messages]}` (what the screen and the first-example view read)."""
    loaded = load_rows(source, data.subset, data.split, max_rows)
    dataset = load_prompt_rows(loaded, data.format, data.columns, data.system_prompt)[0]
    return [{"prompt": prompt} for prompt in dataset["prompt"]]


def screen_prompt_data(data: DataSection, rows: list[dict[str, Any]], evaluation: list[dict[str, Any]] | None,
                       against: list[str] | tuple = ()) -> Screen:
    """Repeated prompts, prompts that repeat an eval prompt, and benchmark contamination (lorakit.data.quality), as
    data.dedup/decontaminate say (near-duplicates only with data.dedup: near, lorakit.data.quality says why). `rows`
    and `evaluation` (the eval prompts, or None): canonical prompts."""
    if data.dedup == "off" and data.decontaminate == "off":
        return Screen(rows=len(rows), dedup="off", decontaminate="off", settings=settings_of(data))
    return screen_rows("prompt", [as_chat(r) for r in rows], data,
                       [as_chat(r) for r in evaluation] if evaluation is not None else None,
                       eval_name=data.eval or "eval data", against=against)


def as_chat(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": row["prompt"]}


def prepare_prompt_data(data: DataSection, tokenizer, seed: int, max_completion_length: int,
                        check_rows: RowCheck | None = None) -> PreparedData:
    rows = canonical_prompts(data.train, data, data.max_rows) if data.train else None
    evaluation_rows = canonical_prompts(data.eval, data) if data.eval else None
    screen = screen_prompt_data(data, rows, evaluation_rows) if rows is not None else None
    if screen is not None:
        report_screen(screen, data.train)
    train, evaluation, fmt, fingerprint, _ = tokenize_with_eval(
        data, seed, "prompt data",
        lambda source, max_rows: load_prompt_source(source, data, tokenizer, max_completion_length, check_rows,
                                                    max_rows),
        drop_rows=screen.dropped if screen is not None else ())
    lengths = train["prompt_length"]
    extra = [c for c in train.column_names if c not in ("prompt", "prompt_length", ROW_COLUMN)]
    stats = {"rows": len(train), "eval_rows": len(evaluation) if evaluation is not None else 0,
             "tokens": sum(lengths), "max_length": max(lengths), "columns": extra}
    if screen is not None:
        stats["quality"] = screen.record()
    return PreparedData(train, evaluation, fmt, fingerprint, data.train, stats, False, ("prompt_length",),
                        first_example=first_kept(rows, screen))
