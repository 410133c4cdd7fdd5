"""Preference data for DPO: detect the format, convert to one conversational shape, tokenize and lint.

Canonical rows are `{"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}`:
every format (strings, message lists, UltraFeedback's full conversations, implicit prompts, Anthropic HH text,
system/question rows) becomes a conversation rendered with the run's chat template, so DPO sees exactly the layout
the SFT model was trained on. Tokenization follows TRL's rule (the completion starts where prompt and
prompt+completion tokens diverge); lorakit does it itself so it can truncate prompts from the left
(`dpo.max_prompt_length`), check every pair before weights load, and cache the result.
"""

from __future__ import annotations

import re
from typing import Any

from lorakit.chat_template import Stops, TemplateRenderError, render, special_tokens
from lorakit.config import DataSection
from lorakit.data.cache import cache_key, cached_dataset, tokenizer_fingerprint
from lorakit.data.checks import raise_if_problems, refusal_hint, row_numbers
from lorakit.data.formats import (
    RowProblem,
    convert_rows,
    detect_format,
    parse_messages,
    rename_columns,
    require_columns,
)
from lorakit.data.load import load_rows
from lorakit.data.prepared import PreparedData, first_kept, tokenize_with_eval
from lorakit.data.quality import Screen, report_screen, screen_rows, settings_of
from lorakit.data.tokenize import cut_at_stop, turn_output
from lorakit.errors import DataError

PREFERENCE_SIGNATURES: list[tuple[str, set[str]]] = [
    ("system_question", {"question", "chosen", "rejected"}),
    ("preference", {"prompt", "chosen", "rejected"}),
    ("hh", {"chosen", "rejected"}),  # told apart from implicit_preference by the row's content, below
    ("implicit_preference", {"chosen", "rejected"}),
]
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


# ---------------------------------------------------------------------------------------------------------------
# Conversion


def parse_hh(text: Any, field_name: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages."""
    if not isinstance(text, str) or not text.strip():
        raise RowProblem(f"'{field_name}' is empty")
    parts = HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem(f"'{field_name}' is not Human:/Assistant: dialogue text")
    return [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
            for speaker, content in zip(parts[1::2], parts[2::2])]


def as_messages(value: Any, field_name: str, role: str) -> list[dict[str, str]]:
    """A string becomes one message of `role`; a list is parsed as messages."""
    if value is None:
        raise RowProblem(f"'{field_name}' is missing")
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(f"'{field_name}' is empty")
        return [{"role": role, "content": value}]
    return parse_messages(value, field_name)


def split_shared_prefix(chosen: list[dict[str, str]], rejected: list[dict[str, str]]):
    """Implicit prompt: the turns both conversations share, up to the first that differs."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def strip_prompt(prompt: list[dict[str, str]], response: list[dict[str, str]]) -> list[dict[str, str]]:
    """UltraFeedback repeats the prompt turns in chosen/rejected: drop them when they are there."""
    if len(response) > len(prompt) and response[: len(prompt)] == prompt:
        return response[len(prompt):]
    return response


def check_pair(prompt, chosen, rejected) -> dict[str, Any]:
    if not prompt or prompt[-1]["role"] == "assistant":
        raise RowProblem("the prompt must end with a user (or system) turn")
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response or response[0]["role"] != "assistant":
            raise RowProblem(f"'{name}' must be an assistant reply")
        if not any(m["content"].strip() for m in response):
            raise RowProblem(f"'{name}' response is empty")
    if chosen == rejected:
        raise RowProblem("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def preference_converter(fmt: str, system_prompt: str | None):
    def with_system(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
        if system_prompt and not (prompt and prompt[0]["role"] == "system"):
            return [{"role": "system", "content": system_prompt}] + prompt
        return prompt

    def explicit(row: dict[str, Any]) -> dict[str, Any]:
        prompt = as_messages(row.get("prompt"), "prompt", "user")
        chosen = strip_prompt(prompt, as_messages(row.get("chosen"), "chosen", "assistant"))
        rejected = strip_prompt(prompt, as_messages(row.get("rejected"), "rejected", "assistant"))
        if isinstance(row.get("prompt"), str) and len(chosen) > 1 and chosen[-1]["role"] == "assistant":
            # A string prompt beside full conversations: the conversations carry the real prompt turns.
            prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
        return check_pair(with_system(prompt), chosen, rejected)

    def implicit(row: dict[str, Any]) -> dict[str, Any]:
        chosen = as_messages(row.get("chosen"), "chosen", "assistant")
        rejected = as_messages(row.get("rejected"), "rejected", "assistant")
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
        return check_pair(with_system(prompt), chosen, rejected)

    def hh(row: dict[str, Any]) -> dict[str, Any]:
        prompt, chosen, rejected = split_shared_prefix(parse_hh(row.get("chosen"), "chosen"),
                                                       parse_hh(row.get("rejected"), "rejected"))
        return check_pair(with_system(prompt), chosen, rejected)

    def system_question(row: dict[str, Any]) -> dict[str, Any]:
        question = as_messages(row.get("question"), "question", "user")
        system = row.get("system")
        prompt = ([{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else [])
        return check_pair(with_system(prompt + question), as_messages(row.get("chosen"), "chosen", "assistant"),
                          as_messages(row.get("rejected"), "rejected", "assistant"))

    converters = {"preference": explicit, "implicit_preference": implicit, "hh": hh,
                  "system_question": system_question}
    if fmt not in converters:
        raise DataError(f"data.format '{fmt}' is not a preference format",
                        hint="use preference, implicit_preference, hh or system_question (or auto)")
    return converters[fmt]


def looks_like_hh(dataset) -> bool:
    sample = dataset[0]["chosen"]
    return isinstance(sample, str) and sample.lstrip("\n").startswith("Human:")


def load_preference_examples(loaded, fmt: str, columns: dict[str, str], system_prompt: str | None):
    """Loaded rows -> (canonical preference dataset, detected format)."""
    dataset = rename_columns(loaded.dataset, columns, loaded.source)
    if fmt == "auto":
        fmt = detect_format(dataset.column_names, PREFERENCE_SIGNATURES, loaded.source)
        if fmt == "hh" and not looks_like_hh(dataset):
            fmt = "implicit_preference"
    elif fmt not in dict(PREFERENCE_SIGNATURES):
        stage = "grpo" if fmt == "prompt" else "sft"
        raise DataError(f"data.format '{fmt}' is a {'prompt' if stage == 'grpo' else 'supervised'} format, not a "
                        "preference one", hint=f"use it with `lorakit {stage}`, or set data.format to auto")
    else:
        require_columns(dataset.column_names, fmt, PREFERENCE_SIGNATURES, loaded.source)
    return convert_rows(dataset, preference_converter(fmt, system_prompt), loaded.source, "preference"), fmt


# ---------------------------------------------------------------------------------------------------------------
# Tokenization


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def response_texts(tokenizer, prompt: list[dict[str, str]], response: list[dict[str, str]], convention) -> tuple[str, str]:
    """(prompt text, prompt + response text) as the model sees and writes them at inference.

    A one-message response is the model's output after the generation prompt, up to its stop token (appended for
    next-turn templates such as GLM, and cut before what some templates write after it, like Phi-3.5's final
    <|endoftext|>); see data/tokenize.py. Longer responses are rendered as the conversation they are.
    """
    if len(response) == 1 and convention is not None:
        specials = special_tokens(tokenizer)
        prompt_text, output = turn_output(tokenizer, prompt + response, len(prompt), None, specials)
        cut = cut_at_stop(output, set(convention.stop_tokens), specials)
        return prompt_text, prompt_text + (output[:cut] if cut is not None else output + convention.token)
    return (render(tokenizer, prompt, add_generation_prompt=True), render(tokenizer, prompt + response))


def encode_pair(row: dict[str, Any], tokenizer, max_length: int, max_prompt_length: int | None,
                convention) -> dict[str, Any]:
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    try:
        prompt_text, chosen_text = response_texts(tokenizer, row["prompt"], row["chosen"], convention)
        _, rejected_text = response_texts(tokenizer, row["prompt"], row["rejected"], convention)
    except TemplateRenderError as exc:
        return {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "truncated": False, "stop_trained": True,
                "length": 0, "error": f"the chat template refuses this conversation: {exc}"}
    prompt_ids = ids(prompt_text)
    with_chosen, with_rejected = ids(chosen_text), ids(rejected_text)
    prompt_len = min(_common_prefix(prompt_ids, with_chosen), _common_prefix(prompt_ids, with_rejected))
    prompt_ids, chosen_ids, rejected_ids = prompt_ids[:prompt_len], with_chosen[prompt_len:], with_rejected[prompt_len:]
    truncated = False
    if max_prompt_length and len(prompt_ids) > max_prompt_length:
        prompt_ids, truncated = prompt_ids[-max_prompt_length:], True  # keep the turn being answered
    room = max(max_length - len(prompt_ids), 0)
    if len(chosen_ids) > room or len(rejected_ids) > room:
        chosen_ids, rejected_ids, truncated = chosen_ids[:room], rejected_ids[:room], True
    stop_ids = set(convention.stop_ids) if convention is not None else set()
    stops = not stop_ids or truncated or (bool(stop_ids & set(chosen_ids)) and bool(stop_ids & set(rejected_ids)))
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "truncated": truncated,
        "stop_trained": stops,
        "length": len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)),
        "error": "",
    }


LINT_COLUMNS = ("truncated", "stop_trained", "length", "error")


def lint_pairs(tokenized, source: str, eot_token: str, max_length: int) -> list[tuple[str, str]]:
    problems = []
    errors = tokenized["error"] if "error" in tokenized.column_names else [""] * len(tokenized)
    refused = [i for i, e in enumerate(errors) if e]
    if refused:
        problems.append((f"{source}: {len(refused)} pair(s) cannot be rendered (rows {row_numbers(refused)}): "
                         f"{errors[refused[0]]}", refusal_hint(errors[refused[0]])))
    chosen, rejected = tokenized["chosen_ids"], tokenized["rejected_ids"]
    empty = [i for i, (c, r) in enumerate(zip(chosen, rejected)) if (not c or not r) and not errors[i]]
    if empty:
        problems.append((f"{source}: {len(empty)} pair(s) have no response token left after truncation to "
                         f"max_length={max_length} (rows {row_numbers(empty)})",
                         "raise data.max_length, lower dpo.max_prompt_length, or remove those rows"))
    same = [i for i, (c, r) in enumerate(zip(chosen, rejected)) if c and c == r]
    if same:
        problems.append((f"{source}: {len(same)} pair(s) are identical once tokenized (rows {row_numbers(same)})",
                         "remove those rows: identical pairs carry no preference"))
    no_stop = [i for i, ok in enumerate(tokenized["stop_trained"]) if not ok]
    if no_stop:
        problems.append((f"{source}: the end-of-turn token {eot_token} is missing from {len(no_stop)} response(s) "
                         f"(rows {row_numbers(no_stop)})", "use a chat template that closes assistant turns"))
    return problems


def tokenize_preferences(source: str, data: DataSection, max_prompt_length: int | None, tokenizer,
                         max_rows: int | None = None, stops: Stops | None = None):
    """One preference source -> (tokenized pairs, format, fingerprint, was_cached); `stops` as in
    lorakit.data.sft.tokenize_source."""
    stops = stops if stops is not None else Stops.of(tokenizer)
    loaded = load_rows(source, data.subset, data.split, max_rows)
    convention = stops.require()  # refuses, naming why, a template whose turns cannot stop
    key = cache_key({"data": loaded.fingerprint, "tokenizer": tokenizer_fingerprint(tokenizer),
                     "generation_eos": list(stops.generation_eos),
                     "format": data.format, "columns": data.columns, "system_prompt": data.system_prompt,
                     "max_length": data.max_length, "max_prompt_length": max_prompt_length})
    def build():
        examples, fmt = load_preference_examples(loaded, data.format, data.columns, data.system_prompt)
        tokenized = examples.map(
            lambda row: encode_pair(row, tokenizer, data.max_length, max_prompt_length, convention),
            remove_columns=examples.column_names, num_proc=data.num_proc)
        return tokenized, {"format": fmt}

    tokenized, meta, was_cached = cached_dataset("dpo", key, build)
    raise_if_problems(lint_pairs(tokenized, source, convention.describe(), data.max_length))
    return tokenized, meta["format"], loaded.fingerprint, was_cached


def canonical_pairs(source: str, data: DataSection, max_rows: int | None = None):
    """(pairs, format): a data source's pairs in lorakit's canonical preference shape."""
    loaded = load_rows(source, data.subset, data.split, max_rows)
    return load_preference_examples(loaded, data.format, data.columns, data.system_prompt)


def screen_preference_data(data: DataSection, rows, against: list[str] | tuple = ()) -> Screen:
    """The pairs' duplicates, contamination and equal answers (lorakit.data.quality)."""
    if data.dedup == "off" and data.decontaminate == "off":
        return Screen(rows=len(rows), dedup="off", decontaminate="off", settings=settings_of(data))
    evaluation = canonical_pairs(data.eval, data)[0] if data.eval else None
    return screen_rows("preference", rows, data, evaluation, eval_name=data.eval or "eval data", against=against)


def prepare_preference_data(data: DataSection, max_prompt_length: int | None, tokenizer,
                            seed: int, stops: Stops | None = None) -> PreparedData:
    rows = canonical_pairs(data.train, data, data.max_rows)[0] if data.train else None
    screen = screen_preference_data(data, rows) if rows is not None else None
    if screen is not None:
        report_screen(screen, data.train)
    train, evaluation, fmt, fingerprint, cached = tokenize_with_eval(
        data, seed, "preference data",
        lambda source, max_rows: tokenize_preferences(source, data, max_prompt_length, tokenizer, max_rows, stops),
        drop_rows=screen.dropped if screen is not None else ())
    stats = {"rows": len(train), "eval_rows": len(evaluation) if evaluation is not None else 0,
             "tokens": sum(train["length"]), "truncated": sum(train["truncated"]), "max_length": max(train["length"])}
    if screen is not None:
        stats["quality"] = screen.record()
    return PreparedData(train, evaluation, fmt, fingerprint, data.train, stats, cached, LINT_COLUMNS,
                        first_example=first_kept(rows, screen))
