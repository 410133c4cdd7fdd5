"""Render canonical rows with the chat template and tokenize them with per-token loss labels.

Which tokens carry the loss is decided from character spans, not from `{% generation %}` markers (most stock
templates lack them): each assistant turn's span is found by rendering the conversation up to that turn with and
without the turn, and tokens overlapping a span are trained. The span runs to the end of the turn, so the
end-of-turn token (the one that stops generation) is trained too.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]], train_from: int, full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns at index >= train_from in the rendered conversation `full`."""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < train_from:
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
            spans.append((len(before), len(upto)))
            cursor = len(upto)
            continue
        # Templates that rewrite earlier turns (e.g. strip reasoning) are not prefix-consistent: find the reply
        # text itself and extend the span over the end-of-turn marker that follows it.
        start = full.find(message["content"], cursor)
        if start < 0:
            continue  # the template dropped this turn: it cannot be trained (the lint reports the row if none is)
        end = start + len(message["content"])
        end = _extend_over_turn_end(tokenizer, full, end)
        spans.append((start, end))
        cursor = end
    return spans


def _extend_over_turn_end(tokenizer, full: str, end: int) -> int:
    specials = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)
    rest = full[end:]
    stripped = rest.lstrip(" ")
    for token in specials:
        if stripped.startswith(token):
            return end + (len(rest) - len(stripped)) + len(token)
    return end


def encode_example(row: dict[str, Any], tokenizer, train_on: str, max_length: int, eot_id: int | None) -> dict:
    if row["messages"]:
        text = render(tokenizer, row["messages"])
        spans = assistant_spans(tokenizer, row["messages"], row["train_from"], text)
        add_special = False  # the template decides about BOS
        expected_stops = len(spans)
    else:
        # Raw text: append EOS so the model learns where a completion ends (as TRL does).
        completion = row["completion"]
        if tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        text = row["prompt"] + completion
        spans = [(len(row["prompt"]), len(text))]
        add_special = True
        expected_stops = 1
        eot_id = tokenizer.eos_token_id
    encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [tid if _overlaps(off, spans) else IGNORE for tid, off in zip(ids, encoded["offset_mapping"])]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    stops = sum(1 for label in labels if label == eot_id) if eot_id is not None else 0
    return {
        "input_ids": ids,
        "labels": labels,
        "num_trained": sum(1 for label in labels if label != IGNORE),
        "stop_trained": stops >= expected_stops or truncated,
        "truncated": truncated,
        "length": len(ids),
    }


def _overlaps(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = offset
    if end <= start:  # tokens with no text (some special tokens report (0, 0))
        return False
    return any(start < span_end and end > span_start for span_start, span_end in spans)


def tokenize_dataset(dataset, tokenizer, train_on: str, max_length: int, eot_id: int | None, num_proc: int | None):
    def encode(row: dict[str, Any]) -> dict[str, Any]:
        return encode_example(row, tokenizer, train_on, max_length, eot_id)

    return dataset.map(encode, remove_columns=dataset.column_names, num_proc=num_proc)
