"""`lorakit data check`: every check a training run would make on its data, without training."""

from __future__ import annotations

from typing import Any

from lorakit.config import DataSection
from lorakit.data.checks import duplicate_count, length_stats
from lorakit.errors import ConfigError


def check_data(path: str, model: str | None, stage: str, fmt: str, max_length: int,
               overrides: list[str]) -> dict[str, Any]:
    from lorakit.config import parse_set, set_path

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
        from lorakit.data.preference import check_preference_data

        return check_preference_data(data, model)
    if stage == "grpo":
        from lorakit.data.prompts import check_prompt_data

        return check_prompt_data(data, model)
    raise ConfigError(f"--stage {stage!r} is not sft, dpo or grpo", hint="use --stage sft, dpo or grpo")


FLAGS = {"format": "--format", "max_length": "--max-length", "train": "PATH"}


def validate_data_settings(raw: dict[str, Any]) -> DataSection:
    """The data section `data check` checks with: each problem one line naming the field (and its flag) and what
    it allows, as recipes report it (lorakit.config.describe_error)."""
    from pydantic import ValidationError

    from lorakit.config import describe_error

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
    from lorakit.data.formats import load_sft_examples
    from lorakit.data.load import load_rows

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
    from lorakit.data.sft import tokenize_source
    from lorakit.model import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(model))
    tokenized, _, _, _ = tokenize_source(data.train, data, tokenizer, data.max_rows)  # raises on lint problems
    stats = length_stats(tokenized["length"])
    report.update({f"tokens {k}": v for k, v in stats.items() if k != "count"})
    report["trained tokens"] = sum(tokenized["num_trained"])
    report[f"truncated at {data.max_length}"] = sum(tokenized["truncated"])
    report["mask/EOS lint"] = "ok"
    return report
