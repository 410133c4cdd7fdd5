"""See what trains: one example rendered with the run's chat template, token by token, with the loss-carrying tokens
marked, the template's name and source, the stop token, and how many tokens of each role are trained.

`explain_example(tokenizer, template, example)` is the one entry point: `lorakit data check --show N` prints N of
them (Rich styles, or token ids, strings and label flags with --json), every sft/dpo run prints its first training
example compactly when it starts and saves it as example.json in the run folder, and GRPO shows its prompts with it.
The labels are the ones training uses (lorakit.data.tokenize / lorakit.data.preference compute them), so a template
or mask bug is visible before any weights load.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lorakit.chat_families import TemplateChoice
from lorakit.chat_template import Stops, TemplateRenderError, render, special_tokens
from lorakit.data.formats import row_tools, template_messages
from lorakit.data.preference import encode_pair
from lorakit.data.tokenize import IGNORE, encode_text, plan_examples
from lorakit.errors import DataError

EXAMPLE_FILE = "example.json"  # in a run folder: its first training example as explain_example shows it


@dataclass
class Token:
    id: int
    text: str
    trained: bool  # label != -100
    role: str  # system | user | assistant | tool | prompt | completion | text
    special: bool


@dataclass
class Sequence:
    """One training sequence (a row may give several; a preference pair gives chosen and rejected)."""

    name: str  # "example", "turn 3", "chosen", "rejected", "prompt"
    tokens: list[Token]
    truncated: bool = False

    @property
    def trained(self) -> int:
        return sum(1 for t in self.tokens if t.trained)

    def trained_by_role(self) -> dict[str, int]:
        return dict(Counter(t.role for t in self.tokens if t.trained))

    def tokens_by_role(self) -> dict[str, int]:
        return dict(Counter(t.role for t in self.tokens))


@dataclass
class Explained:
    row: int | None  # 1-based source row, when known
    sequences: list[Sequence]
    template: dict[str, Any]  # TemplateChoice.record(), or {"name": ...} for raw text
    stop: str  # the stop token(s), as lorakit.chat_template.StopConvention.describe() says
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "template": self.template, "stop": self.stop, "notes": self.notes,
                "sequences": [{"name": s.name, "truncated": s.truncated, "trained": s.trained,
                               "trained_by_role": s.trained_by_role(), "tokens_by_role": s.tokens_by_role(),
                               "token_ids": [t.id for t in s.tokens], "tokens": [t.text for t in s.tokens],
                               "trained_mask": [t.trained for t in s.tokens], "roles": [t.role for t in s.tokens]}
                              for s in self.sequences]}


def explain_example(tokenizer, template: TemplateChoice | None, example: dict[str, Any], *,
                    train_on: str = "assistant", max_length: int = 2048, max_prompt_length: int | None = None,
                    row: int | None = None, stops: Stops | None = None) -> Explained:
    """An example as training sees it (`stops`: the model's, lorakit.chat_template.Stops; default: the tokenizer's
    alone). `example` is a canonical row: an SFT row (lorakit.data.formats: messages, or
    prompt/completion text), a preference pair (prompt, chosen, rejected) or a prompt alone (GRPO: {"prompt":
    [messages]}, nothing trained until the model writes a completion)."""
    record = template.record() if template is not None else {"name": "tokenizer", "source": "the tokenizer's own"}
    stops = stops if stops is not None else Stops.of(tokenizer)
    if "chosen" in example and "rejected" in example:
        return _explain_pair(tokenizer, stops, record, example, max_length, max_prompt_length, row)
    if isinstance(example.get("prompt"), list):
        return _explain_prompt(tokenizer, stops, record, example["prompt"], row)
    if example.get("messages"):
        return _explain_chat(tokenizer, stops, record, example, train_on, max_length, row)
    return _explain_text(tokenizer, example, train_on, max_length, row)


# ---------------------------------------------------------------------------------------------------------------
# SFT


def _explain_chat(tokenizer, stops: Stops, record, example, train_on, max_length, row) -> Explained:
    convention = stops.require()
    messages = template_messages({"extras": "", **example})
    tools = row_tools(example)
    try:
        planned = plan_examples(tokenizer, {"extras": "", "tools": "", **example}, convention)
    except TemplateRenderError as exc:
        raise DataError(f"the chat template refuses this conversation: {exc}",
                        hint="fix the row, or set model.chat_template") from None
    spans = role_spans(tokenizer, messages, tools)
    stop_ids = set(convention.stop_ids)
    sequences = []
    for number, plan in enumerate(planned):
        encoded = encode_text(tokenizer, plan.text, plan.spans, train_on, max_length, False, stop_ids, len(plan.spans))
        roles = _roles_at(tokenizer, plan.text, spans, max_length, outputs=plan.spans)
        name = "example" if len(planned) == 1 else f"sequence {number + 1}"
        sequences.append(_sequence(tokenizer, name, encoded["input_ids"], encoded["labels"], roles,
                                   encoded["truncated"]))
    return Explained(row, sequences, record, convention.describe(), list(convention.notes))


def _explain_text(tokenizer, example, train_on, max_length, row) -> Explained:
    completion = example.get("completion") or ""
    if tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    prompt = example.get("prompt") or ""
    text = prompt + completion
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    encoded = encode_text(tokenizer, text, [(len(prompt), len(text))], train_on, max_length, True, eos, 1 if eos else 0)
    offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"][:max_length]
    roles = ["completion" if start >= len(prompt) and end > start else "prompt" for start, end in offsets]
    return Explained(row, [_sequence(tokenizer, "example", encoded["input_ids"], encoded["labels"], roles,
                                     encoded["truncated"])],
                     {"name": "none", "source": "raw text (no chat template)", "reason": "prompt/completion or text rows"},
                     repr(tokenizer.eos_token))


def role_spans(tokenizer, messages: list[dict[str, Any]], tools=None) -> list[tuple[int, int, str]]:
    """(start, end, role) of each message in the rendered conversation, from renders of its growing prefixes; a
    template that does not render prefixes as prefixes (rare) gets no spans, and its tokens the role 'text'."""
    spans, previous = [], ""
    for k in range(1, len(messages) + 1):
        try:
            text = render(tokenizer, messages[:k], tools=tools)
        except TemplateRenderError:
            return []
        if not text.startswith(previous):
            return []
        spans.append((len(previous), len(text), messages[k - 1]["role"]))
        previous = text
    return spans


def _roles_at(tokenizer, text: str, spans, max_length: int, outputs=()) -> list[str]:
    """The role of each token of `text`: the message whose span holds its first character; a token of the model's
    output (`outputs`: the spans training marks) is the assistant's, wherever the text was cut from."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:max_length]
    roles = []
    for start, end in offsets:
        if any(start < o_end and end > o_start for o_start, o_end in outputs):
            roles.append("assistant")
            continue
        role = next((r for s, e, r in spans if s <= start < e), None)
        # past the rendered conversation: the stop token lorakit appends after a final turn (next-turn templates)
        roles.append(role or ("assistant" if spans and start >= spans[-1][1] else "text"))
    return roles


# ---------------------------------------------------------------------------------------------------------------
# Preference pairs and prompts


def _explain_pair(tokenizer, stops: Stops, record, example, max_length, max_prompt_length, row) -> Explained:
    convention = stops.require()
    encoded = encode_pair(example, tokenizer, max_length, max_prompt_length, convention)
    if encoded["error"]:
        raise DataError(encoded["error"], hint="fix the row, or set model.chat_template")
    prompt_ids = encoded["prompt_ids"]
    spans = role_spans(tokenizer, template_messages({"extras": "", "messages": example["prompt"]}))
    prompt_text = render(tokenizer, example["prompt"], add_generation_prompt=True)
    prompt_roles = _roles_at(tokenizer, prompt_text, spans, len(prompt_ids) + 10**6)
    # the prompt's tokens are its rendering's first ones, cut from the left by dpo.max_prompt_length
    kept = prompt_roles[: len(prompt_ids)] if not encoded["truncated"] else prompt_roles[-len(prompt_ids):]
    prompt_roles = kept if prompt_ids else []
    sequences = []
    for name in ("chosen", "rejected"):
        completion = encoded[f"{name}_ids"]
        ids = list(prompt_ids) + list(completion)
        labels = [IGNORE] * len(prompt_ids) + list(completion)
        roles = _pad(prompt_roles, len(prompt_ids), "user") + ["assistant"] * len(completion)
        sequences.append(_sequence(tokenizer, name, ids, labels, roles, encoded["truncated"]))
    return Explained(row, sequences, record, convention.describe(), list(convention.notes))


def _explain_prompt(tokenizer, stops: Stops, record, prompt: list[dict[str, Any]], row) -> Explained:
    convention = stops.require()
    text = render(tokenizer, prompt, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    roles = _pad(_roles_at(tokenizer, text, role_spans(tokenizer, prompt), len(ids)), len(ids), "assistant")
    return Explained(row, [_sequence(tokenizer, "prompt", ids, [IGNORE] * len(ids), roles, False)], record,
                     convention.describe(),
                     ["a prompt: the model's completions are trained, ended by the stop token above"])


def _pad(roles: list[str], length: int, fill: str) -> list[str]:
    return (roles + [fill] * length)[:length]


def _sequence(tokenizer, name: str, ids: list[int], labels: list[int], roles: list[str], truncated: bool) -> Sequence:
    specials = set(special_tokens(tokenizer))
    pieces = [tokenizer.decode([i]) for i in ids]
    tokens = [Token(int(i), text, label != IGNORE, role, text in specials)
              for i, text, label, role in zip(ids, pieces, labels, _pad(roles, len(ids), "text"))]
    return Sequence(name, tokens, truncated)


# ---------------------------------------------------------------------------------------------------------------
# Rendering (Rich)

TRAINED = "bold black on green3"
TRAINED_SPECIAL = "bold black on green3 underline"
SPECIAL = "bold cyan"
PROMPT = "grey62"


def rich_text(sequence: Sequence, limit: int | None = None, marks: bool = False):
    """The sequence as one Rich Text: trained tokens on green, special tokens in cyan, the rest dim. Newlines are
    shown as ↵ and kept, so the layout reads as the model sees it. `marks`: also bracket each trained run with ⟦ ⟧
    (for logs and terminals without colour)."""
    from rich.text import Text

    text = Text()
    tokens = sequence.tokens if limit is None else sequence.tokens[:limit]
    for i, token in enumerate(tokens):
        opening = marks and token.trained and (i == 0 or not tokens[i - 1].trained)
        closing = marks and token.trained and (i + 1 == len(tokens) or not tokens[i + 1].trained)
        shown = token.text.replace("\n", "↵\n")
        if token.trained:
            style = TRAINED_SPECIAL if token.special else TRAINED
        else:
            style = SPECIAL if token.special else PROMPT
        if opening:
            text.append("⟦", style="bold")
        if closing and shown.endswith("\n"):  # the bracket before the line break, where it reads
            text.append(shown[:-1], style=style)
            text.append("⟧\n", style="bold")
            continue
        text.append(shown, style=style)
        if closing:
            text.append("⟧", style="bold")
    if limit is not None and len(sequence.tokens) > limit:
        text.append(f" … ({len(sequence.tokens) - limit} more tokens)", style="italic")
    return text


def header(explained: Explained, sequence: Sequence) -> str:
    where = f"row {explained.row}" if explained.row else "example"
    roles = ", ".join(f"{role} {count}" for role, count in sorted(sequence.trained_by_role().items())) or "none"
    cut = "; truncated at max_length" if sequence.truncated else ""
    return f"{where} ({sequence.name}): {len(sequence.tokens)} tokens, {sequence.trained} trained ({roles}){cut}"


def print_template(console, explained: Explained) -> None:
    """The chat template (name, source, why) and the stop token, and the legend of the styles."""
    from rich.markup import escape

    template = explained.template
    console.print(f"[bold]chat template:[/bold] {escape(str(template.get('name', '?')))} "
                  f"({escape(str(template.get('source', '')))})"
                  + (f": {escape(str(template.get('reason')))}" if template.get("reason") else ""))
    console.print(f"[bold]stop token:[/bold] {escape(explained.stop)}")
    console.print(f"[bold]legend:[/bold] [{TRAINED}]trained[/] (⟦ ⟧ without colour) [{SPECIAL}]special, not "
                  f"trained[/] [{PROMPT}]not trained[/]")


def print_explained(console, explained: Explained, compact: bool = False) -> None:
    """An example's sequences: `data check --show` prints them whole, a training run compactly as it starts."""
    from rich.markup import escape

    marks = console.no_color or not console.is_terminal
    for sequence in explained.sequences:
        console.print(f"[bold]{escape(header(explained, sequence))}[/bold]")
        console.print(rich_text(sequence, limit=160 if compact else None, marks=marks), soft_wrap=True)
