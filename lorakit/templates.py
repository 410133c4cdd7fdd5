"""Chat templates: which one a run uses, and which token ends an assistant turn.

A run uses, in order: the recipe's `model.chat_template`, the tokenizer's own template, or ChatML. The chosen template
is saved with the run's tokenizer, so dpo, merge, generate and the deploy exports all render chats the same way.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.errors import ConfigError

CHATML_END = "<|im_end|>"
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# For a tokenizer without <|im_end|> in its vocabulary: the same layout, ended by the tokenizer's own EOS token, so the
# model still learns a single token that stops generation without growing the vocabulary.
CHATML_EOS = CHATML.replace("'<|im_end|>'", "eos_token")

PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]


def default_template(tokenizer) -> str:
    return CHATML if CHATML_END in tokenizer.get_vocab() else CHATML_EOS


def resolve_chat_template(tokenizer, override: str | None) -> str:
    """Set and return the run's chat template (recipe override, tokenizer's own, or ChatML)."""
    if override:
        path = Path(override).expanduser()
        if "{" not in override and path.suffix in (".jinja", ".j2", ".txt", ".jinja2"):
            if not path.is_file():
                raise ConfigError(f"model.chat_template file {path} not found", hint="give a .jinja file or inline Jinja")
            from lorakit.safe_io import read_text

            template = read_text(path, ConfigError, hint="save the template as UTF-8 text")
        elif override == "chatml":
            template = default_template(tokenizer)
        else:
            template = override
    elif getattr(tokenizer, "chat_template", None):
        template = tokenizer.chat_template
    else:
        template = default_template(tokenizer)
    tokenizer.chat_template = template
    try:
        tokenizer.apply_chat_template(PROBE, tokenize=False)
    except Exception as exc:
        raise ConfigError(f"the chat template does not render: {exc}", hint="check model.chat_template") from None
    return template


def end_of_turn_token(tokenizer) -> tuple[int, str] | None:
    """The special token the template puts right after an assistant message (e.g. <|im_end|>, <|eot_id|>)."""
    text = tokenizer.apply_chat_template(PROBE, tokenize=False)
    reply = PROBE[-1]["content"]
    at = text.rfind(reply)
    if at < 0:
        return None
    suffix = text[at + len(reply):]
    special = set(tokenizer.all_special_ids) | {
        token_id for token_id, token in tokenizer.added_tokens_decoder.items() if getattr(token, "special", False)
    }
    for token_id in tokenizer(suffix, add_special_tokens=False).input_ids:
        if token_id in special:
            return token_id, tokenizer.convert_ids_to_tokens(token_id)
    return None


def stop_token_ids(tokenizer) -> list[int]:
    """Every token that should end generation: EOS and the end-of-turn token."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    eot = end_of_turn_token(tokenizer)
    if eot is not None and eot[0] not in ids:
        ids.append(eot[0])
    return ids
