"""Render canonical rows with the model's chat template and tokenize them with per-token loss labels.

Which tokens carry the loss is decided from character spans, not from `{% generation %}` markers (most released
templates lack them). For each assistant turn lorakit renders what the model sees at inference, the conversation up to
the turn with the generation prompt, and the turn as the template writes it when it is the last message; the model's
output is what follows the prompt, up to and including the token(s) that stop it (chat_template.StopConvention).
Exactly that is trained: the reply, tool calls and reasoning the template writes, and the stop token; never the
prompt, the assistant header, tool results, or text the template writes after the stop token.

Most templates render a turn the same way whether or not more turns follow, so one example trains every assistant
turn of a conversation in place. Some render history differently from the last turn (Qwen3 and QwQ strip reasoning
from earlier turns; Gemma 4 and QwQ prefill the generation prompt with something the rendered turn lacks); a turn
that is not written in the conversation the way the model produced it becomes an example of its own: the
conversation up to it, with that turn rendered as the final one, as at inference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lorakit.chat_template import (
    StopConvention,
    TemplateRenderError,
    find_special,
    generation_split,
    render,
    special_tokens,
    stop_convention,
    tokens_at,
)
from lorakit.data.formats import row_tools, template_messages

IGNORE = -100
# A generation prompt ending in an open reasoning block: the reply must close it before answering. (opener at the
# end of the prompt, its closer, what separates the closed block from the answer)
OPEN_REASONING = [
    (re.compile(r"<(think|thinking|seed:think)>\s*$"), "\n</{0}>\n\n"),  # QwQ, DeepSeek-R1, MiniMax: '<think>\n'
    (re.compile(r"<\|START_(THINKING)\|>$"), "<|END_{0}|>"),               # Cohere Command A: '<|START_THINKING|>'
]


@dataclass
class Planned:
    """One training sequence: its text and the character spans that carry the loss."""

    text: str
    spans: list[tuple[int, int]]


def reasoning_of(message: dict[str, Any]) -> str:
    reasoning = message.get("reasoning_content") or ""
    content = message.get("content") or ""
    if not reasoning and "</think>" in content:
        reasoning = content.split("</think>")[0].split("<think>")[-1].strip("\n")
    return reasoning


def visible_reply(message: dict[str, Any]) -> str:
    """The reply as templates write it (reasoning split off, outer whitespace trimmed as most templates do)."""
    return (message.get("content") or "").split("</think>")[-1].strip()


def turn_output(tokenizer, messages, i: int, tools, specials) -> tuple[str, str]:
    """(prompt, output) for assistant turn i: the text the model is given at inference and the text it writes."""
    message = messages[i]
    kwargs = {"enable_thinking": True} if reasoning_of(message) else {}
    prompt = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools, **kwargs) if i else ""
    final = render(tokenizer, messages[: i + 1], tools=tools, **kwargs)
    reply = visible_reply(message)
    calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
    anchor = final.rfind(reply) if reply else (final.rfind(calls[0]) if calls else -1)
    split = generation_split(prompt, final, anchor if anchor >= 0 else None, specials) if i else 0
    # The previous message's text ahead of the reply means the output was found too early (it would be trained).
    # Apertus writes a reply after a tool result inside the same assistant block, with no header of its own, while
    # its generation prompt opens a new one: the model's output is then the reply itself.
    before = (messages[i - 1].get("content") or "").strip() if i else ""
    if split is not None and len(before) > 3 and anchor >= split and before in final[split:anchor]:
        split = anchor if reply else None
    if split is None:
        raise TemplateRenderError(f"cannot tell where assistant turn {i} begins in what the template writes")
    output = final[split:]
    missing = [name for name in calls if name not in output]
    if reply and reply not in output:
        raise TemplateRenderError(f"the template drops the text of assistant turn {i}")
    if missing:
        raise TemplateRenderError(f"the template does not write the tool calls of assistant turn {i} "
                                  f"({', '.join(missing)}): it has no tool-calling format")
    prefill = prompt[split:] if prompt.startswith(final[:split]) else ""
    if prefill.strip() and output.startswith(prefill.strip()):
        # The prompt already holds the opening the rendered turn repeats (Nemotron 3 Nano: '<think>\n' in the
        # prompt, '<think></think>' in the turn): the model writes what comes after it.
        output = output[len(prefill.strip()):]
    for opener, closing in OPEN_REASONING:
        opened = opener.search(prefill)
        closer = closing.format(opened.group(1)).strip() if opened else ""
        if opened and closer not in output:
            # The prompt opens a reasoning block the rendered turn never shows (QwQ, DeepSeek-R1 distills, MiniMax
            # drop reasoning when they render): the model's output is the reasoning, the closer, then the reply.
            output = reasoning_of(message).strip("\n") + closing.format(opened.group(1)) + output.lstrip("\n")
    return prompt, output


def cut_at_stop(output: str, stop_tokens: set[str], specials: list[str]) -> int | None:
    """End of the stop token(s) in the output: the first stop token and any stop tokens written right after it."""
    for token, start, end in find_special(output, specials):
        if token in stop_tokens:
            for more, _, more_end in tokens_at(output, end, specials):
                if more not in stop_tokens:
                    break
                end = more_end
            return end
    return None


def plan_examples(tokenizer, row: dict[str, Any], convention: StopConvention) -> list[Planned]:
    """The training sequences of one conversation row (usually one)."""
    messages = template_messages(row)
    tools = row_tools(row)
    specials = special_tokens(tokenizer)
    stops = set(convention.stop_tokens)
    full = render(tokenizer, messages, tools=tools)
    in_place: list[tuple[int, int]] = []
    own: list[Planned] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < row["train_from"]:
            continue
        prompt, output = turn_output(tokenizer, messages, i, tools, specials)
        cut = cut_at_stop(output, stops, specials)
        appended = ""
        if cut is None:
            # next-turn convention: the output carries no stop token; the model ends the turn by writing it.
            calls = message.get("tool_calls") and convention.tool_call_token
            appended = convention.tool_call_token if calls else convention.token
            body = output
        else:
            body = output[:cut]
        start = len(prompt)
        if start >= cursor and full.startswith(prompt + body):
            end = start + len(body)
            if appended:
                rest = full[end:]
                gap = len(rest) - len(rest.lstrip())
                following = tokens_at(full, end + gap, specials)
                if following and following[0][0] in stops:
                    end = following[0][2]  # the next turn's opener (GLM's <|user|>) is in the text: train it
                elif not rest.strip():
                    full = full[:end] + appended  # a final turn: the model writes the stop token next
                    end = len(full)
                else:
                    end = -1
            if end >= 0:
                in_place.append((start, end))
                cursor = end
                continue
        text = prompt + body + appended
        own.append(Planned(text, [(start, len(text))]))
    planned = [Planned(full, in_place)] if in_place else []
    return planned + own


def encode_text(tokenizer, text: str, spans: list[tuple[int, int]], train_on: str, max_length: int,
                add_special: bool, stop_ids: set[int], expected_stops: int) -> dict[str, Any]:
    encoded = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [tid if _overlaps(off, spans) else IGNORE for tid, off in zip(ids, encoded["offset_mapping"])]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    stops = sum(1 for label in labels if label in stop_ids)
    return {
        "input_ids": ids,
        "labels": labels,
        "num_trained": sum(1 for label in labels if label != IGNORE),
        "stop_trained": stops >= expected_stops or truncated,
        "truncated": truncated,
        "length": len(ids),
        "error": "",
    }


def encode_row(row: dict[str, Any], tokenizer, train_on: str, max_length: int,
               convention: StopConvention | None) -> list[dict[str, Any]]:
    """One canonical row -> its tokenized training examples (a template error becomes one example naming it)."""
    if row["messages"]:
        try:
            planned = plan_examples(tokenizer, row, convention)
        except TemplateRenderError as exc:
            return [_failed(f"the chat template refuses this conversation: {exc}")]
        if not planned:
            return [_failed("no assistant turn left to train once rendered")]
        stop_ids = set(convention.stop_ids)
        return [encode_text(tokenizer, p.text, p.spans, train_on, max_length, False, stop_ids, len(p.spans))
                for p in planned]
    # Raw text: append EOS so the model learns where a completion ends (as TRL does).
    completion = row["completion"]
    if tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    text = row["prompt"] + completion
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return [encode_text(tokenizer, text, [(len(row["prompt"]), len(text))], train_on, max_length, True, eos,
                        1 if eos else 0)]


def encode_example(row: dict[str, Any], tokenizer, train_on: str, max_length: int,
                   convention: StopConvention | None = None) -> dict:
    """The first training example of a row (tests and callers that know the row makes one)."""
    if convention is None and row["messages"]:
        convention = stop_convention(tokenizer)
    return encode_row({"extras": "", "tools": "", **row}, tokenizer, train_on, max_length, convention)[0]


def _failed(reason: str) -> dict[str, Any]:
    return {"input_ids": [], "labels": [], "num_trained": 0, "stop_trained": False, "truncated": False,
            "length": 0, "error": reason}


def _overlaps(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = offset
    if end <= start:  # tokens with no text (some special tokens report (0, 0))
        return False
    return any(start < span_end and end > span_start for span_start, span_end in spans)


def tokenize_dataset(dataset, tokenizer, train_on: str, max_length: int, convention: StopConvention | None,
                     num_proc: int | None):
    """Canonical rows -> tokenized examples; `row` keeps each example's source row (1 row may give several)."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for index, row in zip(batch["_row"], rows):
            for example in encode_row(row, tokenizer, train_on, max_length, convention):
                example["row"] = index
                for key, value in example.items():
                    out.setdefault(key, []).append(value)
        return out

    indexed = dataset.add_column("_row", list(range(len(dataset))))
    return indexed.map(encode, batched=True, batch_size=64, remove_columns=indexed.column_names, num_proc=num_proc)
