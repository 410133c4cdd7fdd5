"""Supervised data from recipe to trainer-ready tokens: load, convert, tokenize (cached), lint, split."""

from __future__ import annotations

from lorakit.chat_template import Stops
from lorakit.config import DataSection
from lorakit.console import warn
from lorakit.data.cache import cache_key, cached_dataset, tokenizer_fingerprint
from lorakit.data.checks import lint_problems, raise_if_problems, truncation_warning
from lorakit.data.formats import load_sft_examples, load_tools
from lorakit.data.load import load_rows
from lorakit.data.prepared import PreparedData, first_kept, tokenize_with_eval
from lorakit.data.quality import Screen, report_screen, screen_rows, settings_of
from lorakit.data.tokenize import tokenize_dataset

LINT_COLUMNS = ("num_trained", "stop_trained", "truncated", "length", "row", "error")


def tokenize_source(source: str, data: DataSection, tokenizer, max_rows: int | None = None,
                    stops: Stops | None = None):
    """One data source -> (tokenized dataset, format, fingerprint, was_cached).

    `stops`: the model's (lorakit.chat_template.Stops); without them only the tokenizer's EOS and template decide
    which token ends a turn."""
    stops = stops if stops is not None else Stops.of(tokenizer)
    loaded = load_rows(source, data.subset, data.split, max_rows)
    tools = load_tools(data.tools)
    key = cache_key({
        "data": loaded.fingerprint,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "generation_eos": list(stops.generation_eos),
        "format": data.format,
        "columns": data.columns,
        "system_prompt": data.system_prompt,
        "tools": tools,
        "train_on": data.train_on,
        "max_length": data.max_length,
    })

    def build():
        examples, fmt = load_sft_examples(loaded, data.format, data.columns, data.system_prompt, tools)
        chat = any(examples["messages"])
        # A template with no stop token is refused here, naming why, before anything is tokenized.
        convention = stops.require() if chat else None
        tokenized = tokenize_dataset(examples, tokenizer, data.train_on, data.max_length, convention, data.num_proc)
        return tokenized, {"format": fmt, "chat": chat}

    tokenized, meta, was_cached = cached_dataset("sft", key, build)
    fmt = meta["format"]
    stop = stops.require().describe() if meta.get("chat") else repr(tokenizer.eos_token)
    problems = lint_problems(tokenized, source, stop, data.max_length)
    raise_if_problems(problems)
    cut = truncation_warning(tokenized, source, data.max_length)
    if cut:
        warn(cut)
    return tokenized, fmt, loaded.fingerprint, was_cached


def canonical_rows(source: str, data: DataSection, max_rows: int | None = None):
    """(rows, format): a data source's rows in lorakit's canonical SFT shape (what the screen and `data check --show`
    read)."""
    loaded = load_rows(source, data.subset, data.split, max_rows)
    return load_sft_examples(loaded, data.format, data.columns, data.system_prompt, load_tools(data.tools))


def screen_sft_data(data: DataSection, rows, against: list[str] | tuple = ()) -> Screen:
    """The training set's duplicates and contamination (lorakit.data.quality), as data.dedup/decontaminate say."""
    if data.dedup == "off" and data.decontaminate == "off":
        return Screen(rows=len(rows), dedup="off", decontaminate="off", settings=settings_of(data))
    evaluation = canonical_rows(data.eval, data)[0] if data.eval else None
    return screen_rows("sft", rows, data, evaluation, eval_name=data.eval or "eval data", against=against)


def prepare_sft_data(data: DataSection, tokenizer, seed: int, stops: Stops | None = None) -> PreparedData:
    rows = canonical_rows(data.train, data, data.max_rows)[0] if data.train else None
    screen = screen_sft_data(data, rows) if rows is not None else None
    if screen is not None:
        report_screen(screen, data.train)
    train, evaluation, fmt, fingerprint, cached = tokenize_with_eval(
        data, seed, "training data",
        lambda source, max_rows: tokenize_source(source, data, tokenizer, max_rows, stops),
        drop_rows=screen.dropped if screen is not None else ())
    lengths = train["length"]
    stats = {
        "rows": len(train),
        "eval_rows": len(evaluation) if evaluation is not None else 0,
        "tokens": sum(lengths),
        "trained_tokens": sum(train["num_trained"]),
        "truncated": sum(train["truncated"]),
        "max_length": max(lengths),
    }
    if screen is not None:
        stats["quality"] = screen.record()
    return PreparedData(train=train, eval=evaluation, format=fmt, fingerprint=fingerprint, source=data.train,
                        stats=stats, cached=cached, lint_columns=LINT_COLUMNS,
                        first_example=first_kept(rows, screen))
