"""`lorakit data check`: every check a training run would make on its data, without training.

Format, bad rows, the data screen (duplicates, near-duplicates, eval repeats, contamination against the eval data and
`--against` files: lorakit.data.quality), lengths, and with `--model` the tokens, the mask/EOS lint, the chat
template chosen and why, and `--show N` rendered examples with their trained tokens (lorakit.data.show).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lorakit.chat_template import Stops, generation_eos_ids
from lorakit.config import DataSection, describe_error, parse_set, set_path
from lorakit.data.checks import length_stats
from lorakit.data.load import load_rows
from lorakit.data.preference import canonical_pairs, tokenize_preferences
from lorakit.data.prompts import (
    ROW_COLUMN,
    as_chat,
    canonical_prompts,
    check_prompts,
    load_prompt_rows,
    prompt_lengths,
    screen_prompt_data,
)
from lorakit.data.quality import Screen, screen_rows
from lorakit.data.sft import canonical_rows, tokenize_source
from lorakit.data.show import Explained, explain_example
from lorakit.data.texts import pair_segments, sft_segments
from lorakit.errors import ConfigError
from lorakit.model import load_tokenizer, load_tokenizer_and_template, resolve_model_source

MAX_FINDINGS = 50  # rows listed per kind of finding (the counts are always complete)


@dataclass
class DataCheck:
    summary: dict[str, Any]
    screen: Screen
    findings: list[dict[str, Any]] = field(default_factory=list)
    examples: list[Explained] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.summary, "quality": self.screen.record(), "findings": self.findings,
                "examples": [e.to_json() for e in self.examples]}


def check_data(path: str, model: str | None, stage: str, fmt: str, max_length: int, overrides: list[str],
               against: list[str] | None = None, show: int = 0) -> DataCheck:
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
    if stage not in ("sft", "dpo", "grpo"):
        raise ConfigError(f"--stage {stage!r} is not sft, dpo or grpo", hint="use --stage sft, dpo or grpo")
    if stage == "grpo":
        if show:
            raise ConfigError("--show marks trained tokens of sft and dpo rows; a GRPO prompt trains none of its own",
                              hint="drop --show for --stage grpo")
        return check_prompt_data(data, model, against=against or [])
    if show and model is None:
        raise ConfigError("--show needs --model: the examples are rendered with its tokenizer and chat template",
                          hint="e.g. lorakit data check FILE --model builtin:tiny-llama --show 2")
    kind = "preference" if stage == "dpo" else "sft"
    load = canonical_pairs if kind == "preference" else canonical_rows
    rows, fmt = load(data.train, data, data.max_rows)
    evaluation = load(data.eval, data)[0] if data.eval else None
    screen = screen_rows(kind, rows, data, evaluation, eval_name=data.eval or "eval data", against=against or [])
    tokenizer = template = stops = None
    if model is not None:
        source = resolve_model_source(model)
        tokenizer, template = load_tokenizer_and_template(source)
        stops = Stops.of(tokenizer, generation_eos_ids(source.location, source.revision))
    if kind == "preference":
        summary = check_preference_data(data, rows, fmt, tokenizer, stops)
    else:
        summary = check_sft(data, rows, fmt, tokenizer, stops)
    summary.update(screen_summary(screen, kind))
    if template is not None:
        summary["chat template"] = f"{template.name} ({template.source})"
        summary["chat template why"] = template.reason
    result = DataCheck(summary, screen, findings(screen, rows, evaluation, kind))
    if show:
        shown = [i for i in range(len(rows)) if i not in screen.dropped][:show]
        result.examples = [explain_example(tokenizer, template, dict(rows[i]), train_on=data.train_on,
                                           max_length=data.max_length, row=i + 1, stops=stops) for i in shown]
        if kind == "sft" and result.examples:
            summary["stop token"] = result.examples[0].stop
    return result


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


def check_sft(data: DataSection, examples, fmt: str, tokenizer, stops: Stops | None) -> dict[str, Any]:
    """`lorakit data check` (--stage sft): lengths, and with a tokenizer its tokens and the mask/EOS lint."""
    report: dict[str, Any] = {"file": data.train, "format": fmt, "rows": len(examples)}
    if tokenizer is None:
        lengths = [sum(len(m["content"]) for m in row["messages"]) + len(row["prompt"]) + len(row["completion"])
                   for row in examples]
        report.update({f"chars {k}": v for k, v in length_stats(lengths).items() if k != "count"})
        report["note"] = "pass --model to count tokens, run the mask/EOS lint and --show examples"
        return report
    tokenized, _, _, _ = tokenize_source(data.train, data, tokenizer, data.max_rows, stops)  # raises on lint problems
    stats = length_stats(tokenized["length"])
    report.update({f"tokens {k}": v for k, v in stats.items() if k != "count"})
    report["trained tokens"] = sum(tokenized["num_trained"])
    report[f"truncated at {data.max_length}"] = sum(tokenized["truncated"])
    report["mask/EOS lint"] = "ok"
    return report


def check_preference_data(data: DataSection, examples, fmt: str, tokenizer, stops: Stops | None) -> dict[str, Any]:
    """`lorakit data check --stage dpo`: the pairs' lengths, and with a tokenizer their tokens and the pair lint."""
    report: dict[str, Any] = {"file": data.train, "format": fmt, "pairs": len(examples)}
    if tokenizer is None:
        lengths = [sum(len(m["content"]) for m in row["prompt"] + row["chosen"]) for row in examples]
        report.update({f"chars {k}": v for k, v in length_stats(lengths).items() if k != "count"})
        report["note"] = "pass --model to count tokens and run the pair lint"
        return report
    tokenized, _, _, _ = tokenize_preferences(data.train, data, None, tokenizer, data.max_rows, stops)
    report.update({f"tokens {k}": v for k, v in length_stats(tokenized["length"]).items() if k != "count"})
    report[f"truncated at {data.max_length}"] = sum(tokenized["truncated"])
    report["pair lint"] = "ok"
    return report


def check_prompt_data(data: DataSection, model: str | None, max_completion_length: int = 256,
                      against: list[str] | None = None) -> DataCheck:
    """`lorakit data check --stage grpo`: formats, room for completions, and the data screen over the prompts
    (rewards are checked by `lorakit grpo` itself, which knows them)."""
    loaded = load_rows(data.train, data.subset, data.split, data.max_rows)
    dataset, fmt = load_prompt_rows(loaded, data.format, data.columns, data.system_prompt)
    extra = [c for c in dataset.column_names if c not in ("prompt", ROW_COLUMN)]
    report: dict[str, Any] = {"file": data.train, "format": fmt, "prompts": len(dataset),
                              "columns for rewards": ", ".join(extra) or "(none)"}
    prompts = [{"prompt": prompt} for prompt in dataset["prompt"]]
    evaluation = canonical_prompts(data.eval, data) if data.eval else None
    screen = screen_prompt_data(data, prompts, evaluation, against=against or [])
    if model is None:
        lengths = [sum(len(m["content"]) for m in row) for row in dataset["prompt"]]
        report.update({f"chars {k}": v for k, v in length_stats(lengths).items() if k != "count"})
        report["note"] = "pass --model to count tokens and check the room left for completions"
    else:
        tokenizer, _ = _tokenizer(model)
        lengths, errors = prompt_lengths(dataset["prompt"], tokenizer)
        check_prompts(dataset, lengths, errors, data.train, data.max_length, max_completion_length)
        report.update({f"prompt tokens {k}": v for k, v in length_stats(lengths).items() if k != "count"})
        report[f"room for {max_completion_length}-token completions"] = "ok"
    report.update(screen_summary(screen, "prompt"))
    return DataCheck(report, screen, findings(screen, [as_chat(r) for r in prompts],
                                              [as_chat(r) for r in evaluation] if evaluation else None, "sft"))


def _tokenizer(model: str):
    """The tokenizer training would load for `model`, and the model's stops (its generation config's eos list)."""
    source = resolve_model_source(model)
    tokenizer = load_tokenizer(source)
    return tokenizer, Stops.of(tokenizer, generation_eos_ids(source.location, source.revision))


def screen_summary(screen: Screen, kind: str) -> dict[str, Any]:
    counts = screen.counts()
    summary = {"exact duplicates": counts["exact_duplicates"]}
    if screen.duplicates is not None:
        summary["near duplicates"] = counts["near_duplicates"]
        if kind == "prompt" and screen.dedup != "near":
            summary["near duplicates"] = "not checked (prompts: only with data.dedup: near)"
        elif screen.duplicates.near_rows < screen.duplicates.rows:
            summary["near duplicates"] = f"{counts['near_duplicates']} (first {screen.duplicates.near_rows} rows)"
        summary["repeats of eval rows"] = counts["eval_duplicates"]
    if kind == "preference":
        summary["chosen = rejected"] = counts["same_answers"]
    if screen.contamination is not None:
        summary["contaminated rows"] = counts["contaminated"]
        summary["checked against"] = ", ".join(screen.contamination.sources)
        summary["contamination rows/s"] = round(screen.contamination.rows_per_second)
    if screen.dropped:
        summary["dropped by the recipe"] = len(screen.dropped)
    return summary


def findings(screen: Screen, rows, evaluation, kind: str) -> list[dict[str, Any]]:
    """Every finding (up to MAX_FINDINGS of each kind) with its rows (1-based) and what they hold."""
    text = _pair_text if kind == "preference" else _row_text
    out: list[dict[str, Any]] = []
    for label, matches in (("exact duplicate", screen.exact), ("near-duplicate", screen.near),
                           ("repeats an eval row", screen.in_eval)):
        for match in matches[:MAX_FINDINGS]:
            other_rows = evaluation if match.other_set == "eval" else rows
            out.append({"kind": label, "row": match.row + 1, "text": text(rows[match.row]),
                        "matches": f"{'eval ' if match.other_set == 'eval' else ''}row {match.other + 1}",
                        "matching_text": text(other_rows[match.other]), "similarity": match.similarity})
    for row in screen.same_answers[:MAX_FINDINGS]:
        out.append({"kind": "chosen = rejected", "row": row + 1, "text": text(rows[row]), "matches": "",
                    "matching_text": "", "similarity": 1.0})
    for found in screen.contaminated[:MAX_FINDINGS]:
        out.append({"kind": "contains a benchmark row", "row": found.row + 1, "text": text(rows[found.row]),
                    "matches": f"{found.benchmark.source} row {found.benchmark.row}",
                    "matching_text": found.benchmark.text, "similarity": found.overlap})
    for item in out:
        item["dropped"] = (item["row"] - 1) in screen.dropped
    return out


def _row_text(row) -> str:
    return _clip(" | ".join(sft_segments(row)))


def _pair_text(row) -> str:
    return _clip(" | ".join(pair_segments(row)))


def _clip(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
