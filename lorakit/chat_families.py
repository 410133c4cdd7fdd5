"""The chat template a run uses, and why: the recipe's, the tokenizer's own, or its model family's.

Base models usually ship no chat template. Writing ChatML's `<|im_start|>` into a Gemma or Llama 3 base would train
turn markers the vocabulary does not have (they tokenize as a handful of plain-text pieces) and end turns with EOS,
while the model's own vocabulary already holds its family's turn tokens (`<start_of_turn>`/`<end_of_turn>`,
`<|start_header_id|>`/`<|eot_id|>`, ...), which its instruct sibling and every server that knows the family use.

So, for a tokenizer without a template, lorakit picks (in order):
1. the family of the model's architecture (config.json `model_type`), when the family's turn tokens are in the
   vocabulary as single tokens;
2. otherwise the first family whose turn tokens the vocabulary has (a Llama-architecture model trained with ChatML
   tokens, like SmolLM2 or lorakit's tiny built-in);
3. otherwise ChatML with `<|im_start|>`/`<|im_end|>` added to the vocabulary as special tokens; their embedding (and
   output-head) rows are new and untrained, so the run trains those rows too (PEFT's `trainable_token_indices`).

The choice is one line in the run's log and a record in its manifest (`TemplateChoice.record()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Each family: the template (written from the family's published prompt format), the tokens that must exist as
# single tokens for it to apply, and the model types it belongs to.
GEMMA = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] | trim + '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{{- (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PHI3 = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
# Mistral's [INST] format: the system prompt goes into the first user turn, an assistant turn ends with EOS
# ([INST]/[/INST] are control tokens in v3 vocabularies and plain text in v1; either way EOS stops the model).
MISTRAL = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'assistant' %}{{- ' ' + message['content'] | trim + eos_token }}"
    "{%- else %}{{- '[INST] ' + (prefix if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
    "{%- endif %}"
    "{%- endfor %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    turn_tokens: tuple[str, ...]  # must each be one token of the vocabulary
    model_types: tuple[str, ...]  # config.json model_type prefixes of the family
    # tokens that must be special (never split, never a piece of text); Mistral's v1 [INST] is text, EOS is not
    uses_eos: bool = False


FAMILIES = (
    Family("gemma", GEMMA, ("<start_of_turn>", "<end_of_turn>"), ("gemma",)),
    Family("llama3", LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), ("llama",)),
    Family("chatml", CHATML, ("<|im_start|>", "<|im_end|>"),
           ("qwen", "smollm", "olmo", "internlm", "yi", "deepseek")),
    Family("phi3", PHI3, ("<|user|>", "<|assistant|>", "<|end|>"), ("phi",)),
    Family("mistral", MISTRAL, (), ("mistral", "mixtral", "ministral"), uses_eos=True),
)
BY_NAME = {family.name: family for family in FAMILIES}
ADDED_TOKENS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class TemplateChoice:
    """Which chat template a run renders with, where it came from, and why it was chosen."""

    name: str  # recipe | tokenizer | parent | a family name (gemma, llama3, chatml, phi3, mistral) | chatml+added
    source: str  # where the text comes from, in words
    reason: str  # why this one, in one clause
    template: str = field(repr=False, default="")
    added_tokens: tuple[str, ...] = ()  # tokens added to the vocabulary for it: their rows must be trained

    def line(self) -> str:
        return f"Chat template: {self.name} ({self.source}): {self.reason}"

    def record(self) -> dict[str, Any]:
        """The manifest's `chat_template` entry."""
        return {"name": self.name, "source": self.source, "reason": self.reason, "added_tokens": list(self.added_tokens)}

    def inherited(self, run: str) -> "TemplateChoice":
        return TemplateChoice(self.name, f"the tokenizer of {run}", f"as that run trained ({self.reason})",
                              self.template, ())


def single_token(tokenizer, token: str, vocab: dict[str, int]) -> bool:
    """`token` is one vocabulary entry and the tokenizer encodes it as that one id (a special token, not text)."""
    token_id = vocab.get(token)
    if token_id is None:
        return False
    return tokenizer(token, add_special_tokens=False).input_ids == [token_id]


def family_fits(tokenizer, family: Family, vocab: dict[str, int]) -> bool:
    if family.uses_eos and (tokenizer.eos_token is None or not single_token(tokenizer, tokenizer.eos_token, vocab)):
        return False
    return all(single_token(tokenizer, token, vocab) for token in family.turn_tokens)


def family_of(model_type: str | None) -> Family | None:
    if not model_type:
        return None
    kind = model_type.lower()
    return next((f for f in FAMILIES if any(kind.startswith(prefix) for prefix in f.model_types)), None)


def choose_family_template(tokenizer, model_type: str | None) -> TemplateChoice:
    """The template for a tokenizer that has none (see the module docstring). Adds ChatML's tokens to the tokenizer
    when no family fits; the caller must then grow the model's embeddings to len(tokenizer)."""
    vocab = tokenizer.get_vocab()
    own = family_of(model_type)
    kind = f"model type {model_type}" if model_type else "an unknown architecture"
    if own is not None and family_fits(tokenizer, own, vocab):
        tokens = "/".join(own.turn_tokens) or f"EOS {tokenizer.eos_token}"
        return TemplateChoice(own.name, f"the {own.name} family's turn format",
                              f"the tokenizer has no chat template; {kind} is {own.name} and its vocabulary has "
                              f"{tokens}", own.template)
    missing = "" if own is None else f" ({own.name}'s turn tokens {'/'.join(own.turn_tokens)} are not in its vocabulary)"
    for family in FAMILIES:
        if family is not own and not family.uses_eos and family_fits(tokenizer, family, vocab):
            return TemplateChoice(family.name, f"the {family.name} family's turn format",
                                  f"the tokenizer has no chat template; {kind}{missing}, but its vocabulary has "
                                  f"{'/'.join(family.turn_tokens)}", family.template)
    from tokenizers import AddedToken

    absent = [t for t in ADDED_TOKENS if t not in vocab]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in absent], special_tokens=True)
    return TemplateChoice("chatml+added", "ChatML with <|im_start|>/<|im_end|> added as special tokens",
                          f"the tokenizer has no chat template and no model family's turn tokens ({kind}{missing}); "
                          f"the {len(absent)} new token(s) start untrained, so their embedding rows are trained too",
                          CHATML, tuple(absent))


def added_token_ids(tokenizer, choice: TemplateChoice) -> list[int]:
    """The ids of the tokens `choice` added to the vocabulary (their embedding and output rows are trained)."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in choice.added_tokens if t in vocab)
