"""Checks that stop a run which would train silently wrong: the mask/EOS lint, plus length stats (duplicates and
contamination: lorakit.data.quality).

The lint runs on the tokenized data and through the trainer's real collator, because that is where the classic
bugs live: an example with no trained token, an end-of-turn token that is never trained (the model never learns to
stop), and a pad token equal to EOS that a collator masks out of the loss.
"""

from __future__ import annotations

import statistics
from typing import Any

from lorakit.data.tokenize import IGNORE
from lorakit.errors import DataError

MAX_ROWS_NAMED = 8


def row_numbers(indices: list[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:MAX_ROWS_NAMED])
    return shown + (f" and {len(indices) - MAX_ROWS_NAMED} more" if len(indices) > MAX_ROWS_NAMED else "")


def lint_problems(tokenized, source: str, stop: str, max_length: int) -> list[tuple[str, str]]:
    """(message, hint) for each problem; empty when the data trains what it should.

    `stop` names the token(s) that end an assistant turn (chat_template.StopConvention.describe()). Row numbers are
    the source file's: one row may give several examples (see data/tokenize.py).
    """
    problems = []
    rows = tokenized["row"] if "row" in tokenized.column_names else list(range(len(tokenized)))
    errors = tokenized["error"] if "error" in tokenized.column_names else [""] * len(tokenized)
    refused = _unique_rows(rows, [i for i, e in enumerate(errors) if e])
    if refused:
        first = next(e for e in errors if e)
        problems.append((
            f"{source}: {len(refused)} row(s) cannot be rendered (rows {row_numbers(refused)}): {first}",
            refusal_hint(first),
        ))
    num_trained = tokenized["num_trained"]
    untrained = [i for i, n in enumerate(num_trained) if n == 0 and not errors[i]]
    if untrained:
        truncated = tokenized["truncated"]
        cut = sum(1 for i in untrained if truncated[i])
        why = f"; {cut} of them were cut at max_length={max_length} before any trained token" if cut else ""
        problems.append((
            f"{source}: {len(untrained)} example(s) have no trained token (rows {row_numbers(_unique_rows(rows, untrained))})"
            f"{why}",
            "remove those rows, raise data.max_length, or check that the chat template renders assistant turns",
        ))
    stop_trained = tokenized["stop_trained"]
    no_stop = [i for i, ok in enumerate(stop_trained) if not ok and num_trained[i] > 0]
    if no_stop:
        problems.append((
            f"{source}: the end-of-turn token {stop} is not trained in {len(no_stop)} example(s) "
            f"(rows {row_numbers(_unique_rows(rows, no_stop))}); the model would not learn to stop",
            "check that the tokenizer encodes that token as one special token (it may belong to another "
            "tokenizer), or set model.chat_template",
        ))
    return problems


def _unique_rows(rows: list[int], examples: list[int]) -> list[int]:
    return sorted({rows[i] for i in examples})


def refusal_hint(message: str) -> str:
    if "system" in message.lower():
        return ("this model's template has no system role: remove the system messages (and data.system_prompt), or "
                "put their text into the first user message")
    if "alternate" in message.lower():
        return "the template needs user and assistant turns to alternate: merge consecutive turns of the same role"
    if "is undefined" in message:
        return "the template needs a variable lorakit does not supply; set model.chat_template to the standard one"
    return "fix or remove those rows, or set model.chat_template to a template that renders them"


def truncation_warning(tokenized, source: str, max_length: int) -> str | None:
    """Examples cut at max_length that still train: the part of the reply past the cut (and its end-of-turn token)
    is never learned. Not an error (long replies are often cut on purpose), but counted, with the rows."""
    rows = tokenized["row"] if "row" in tokenized.column_names else list(range(len(tokenized)))
    cut = [i for i, (truncated, trained) in enumerate(zip(tokenized["truncated"], tokenized["num_trained"]))
           if truncated and trained > 0]
    if not cut:
        return None
    return (f"{source}: {len(cut)} example(s) are longer than data.max_length={max_length} and are cut there (rows "
            f"{row_numbers(_unique_rows(rows, cut))}): an assistant turn past the cut is trained only up to it; raise "
            "data.max_length to train them whole")


def lint_collated(collator, tokenized, pad_token_id: int | None, eos_token_id: int | None) -> list[tuple[str, str]]:
    """Run the trainer's collator on a few real examples and check no trained label was dropped."""
    if len(tokenized) == 0:
        return []
    lengths = tokenized["length"]
    order = sorted(range(len(tokenized)), key=lambda i: lengths[i])
    picks = sorted({order[0], order[-1], order[len(order) // 2]})
    examples = [{"input_ids": tokenized[i]["input_ids"], "labels": tokenized[i]["labels"]} for i in picks]
    batch = collator(examples)
    labels = batch["labels"]
    lost = 0
    # A label at an example's first position is never a prediction target (nothing precedes it), so collators
    # may mask it; every other trained label must survive.
    if labels.shape[0] == len(examples):  # padded batch: one row per example
        rows = [(example["labels"], labels[row, : len(example["labels"])].tolist())
                for row, example in enumerate(examples)]
    else:  # padding-free: one flat row
        flat = labels.reshape(-1).tolist()
        rows, offset = [], 0
        for example in examples:
            rows.append((example["labels"], flat[offset: offset + len(example["labels"])]))
            offset += len(example["labels"])
    for want, have in rows:
        lost += sum(1 for w, h in zip(want[1:], have[1:]) if w != IGNORE and h == IGNORE)
    if lost:
        same = pad_token_id is not None and pad_token_id == eos_token_id
        return [(
            f"the data collator removes {lost} trained token(s) from the loss"
            + (" (the pad token is the EOS token, so EOS is masked as padding)" if same else ""),
            "give the tokenizer a pad token distinct from EOS",
        )]
    return []


def raise_if_problems(problems: list[tuple[str, str]]) -> None:
    if problems:
        message = problems[0][0] if len(problems) == 1 else "; ".join(p[0] for p in problems)
        raise DataError(message, hint=problems[0][1])


def length_stats(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": ordered[-1],
        "total": sum(ordered),
    }
