"""`lorakit data check`: every check a training run would make on its data, without training."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lorakit.chat_template import Stops, generation_eos_ids
from lorakit.config import DataSection, describe_error, parse_set, set_path
from lorakit.data.checks import duplicate_count, length_stats
from lorakit.data.formats import load_sft_examples
from lorakit.data.load import load_rows
from lorakit.data.preference import load_preference_examples, tokenize_preferences
from lorakit.data.sft import tokenize_source
from lorakit.errors import ConfigError
from lorakit.model import load_tokenizer, resolve_model_source


def check_data(path: str, model: str | None, stage: str, fmt: str, max_length: int,
               overrides: list[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {"train": path, "format": fmt, "max_length": max_length}
    for assignment in overrides:
        parts, value = parse_set(assignment)
        if parts[0] == "data":
            parts = parts[1:]
        if not parts:
            raise ConfigError(f"--set {assignment!r}: name a data field, e.g. --set data.max_length=512",
                              hint="data check takes data.KEY=VALUE")
        set_path(raw, parts, value)
    data = validate_data_settings(raw)
    if stage == "sft":
        return check_sft(data, model)
    if stage == "dpo":
        return check_preference_data(data, model)
    raise ConfigError(f"--stage {stage!r} is not sft or dpo", hint="use --stage sft or --stage dpo")


FLAGS = {"format": "--format", "max_length": "--max-length", "train": "PATH"}


def validate_data_settings(raw: dict[str, Any]) -> DataSection:
    """The data section `data check` checks with: each problem one line naming the field (and its flag) and what
    it allows, as recipes report it (lorakit.config.describe_error)."""
    try:
        return DataSection.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            text = "data." + describe_error(DataSection, error)
            name = str(error["loc"][0]) if error["loc"] else ""
            if name in FLAGS:
                text = text.replace(f"data.{name}:", f"data.{name} ({FLAGS[name]}):", 1)
            problems.append(text)
        raise ConfigError("data check: " + "; ".join(problems),
                          hint="see `lorakit data check --help`; --set takes data.KEY=VALUE") from None


def check_sft(data: DataSection, model: str | None) -> dict[str, Any]:
    """`lorakit data check` (--stage sft)."""
    loaded = load_rows(data.train, data.subset, data.split, data.max_rows)
    examples, fmt = load_sft_examples(loaded, data.format, data.columns, data.system_prompt)
    report: dict[str, Any] = {"file": data.train, "format": fmt, "rows": len(examples),
                              "exact duplicates": duplicate_count(examples)}
    if model is None:
        lengths = [sum(len(m["content"]) for m in row["messages"]) + len(row["prompt"]) + len(row["completion"])
                   for row in examples]
        report.update({f"chars {k}": v for k, v in length_stats(lengths).items() if k != "count"})
        report["note"] = "pass --model to count tokens and run the mask/EOS lint"
        return report
    tokenizer, stops = _tokenizer(model)
    tokenized, _, _, _ = tokenize_source(data.train, data, tokenizer, data.max_rows, stops)  # raises on lint problems
    stats = length_stats(tokenized["length"])
    report.update({f"tokens {k}": v for k, v in stats.items() if k != "count"})
    report["trained tokens"] = sum(tokenized["num_trained"])
    report[f"truncated at {data.max_length}"] = sum(tokenized["truncated"])
    report["mask/EOS lint"] = "ok"
    return report


def check_preference_data(data: DataSection, model: str | None) -> dict[str, Any]:
    """`lorakit data check --stage dpo`."""
    loaded = load_rows(data.train, data.subset, data.split, data.max_rows)
    examples, fmt = load_preference_examples(loaded, data.format, data.columns, data.system_prompt)
    report: dict[str, Any] = {"file": data.train, "format": fmt, "pairs": len(examples),
                              "exact duplicates": duplicate_count(examples)}
    if model is None:
        lengths = [sum(len(m["content"]) for m in row["prompt"] + row["chosen"]) for row in examples]
        report.update({f"chars {k}": v for k, v in length_stats(lengths).items() if k != "count"})
        report["note"] = "pass --model to count tokens and run the pair lint"
        return report
    tokenizer, stops = _tokenizer(model)
    tokenized, _, _, _ = tokenize_preferences(data.train, data, None, tokenizer, data.max_rows, stops)
    report.update({f"tokens {k}": v for k, v in length_stats(tokenized["length"]).items() if k != "count"})
    report[f"truncated at {data.max_length}"] = sum(tokenized["truncated"])
    report["pair lint"] = "ok"
    return report


def _tokenizer(model: str):
    """The tokenizer training would load for `model`, and the model's stops (its generation config's eos list)."""
    source = resolve_model_source(model)
    tokenizer = load_tokenizer(source)
    return tokenizer, Stops.of(tokenizer, generation_eos_ids(source.location, source.revision))
