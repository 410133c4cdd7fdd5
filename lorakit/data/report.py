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
        set_path(raw, parts, value)
    try:
        data = DataSection(**raw)
    except Exception as exc:
        raise ConfigError(f"invalid data settings: {exc}", hint="see `lorakit data check --help`") from None
    if stage == "sft":
        return check_sft(data, model)
    if stage == "dpo":
        from lorakit.data.preference import check_preference_data

        return check_preference_data(data, model)
    raise ConfigError(f"--stage {stage!r} is not sft or dpo", hint="use --stage sft or --stage dpo")


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
