"""Chat templates: which one a run uses, how it renders, and which token(s) make the model stop.

A run uses, in order: the recipe's `model.chat_template`, the tokenizer's own template, or ChatML. The chosen template
is saved with the run's tokenizer, so dpo, merge, generate and the deploy exports all render chats the same way.

The stop convention is read off the template itself, by rendering probe chats, plus the tokenizer's EOS and the
model's `generation_config.json` EOS list, which the caller passes in: `Stops.of(tokenizer, generation_eos)` computes it
once, and whoever needs it (data, generation config, exports) is handed that value. Released templates end an
assistant turn in one of two ways:
- *rendered*: a terminator follows every assistant message (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`,
  `</s>`, harmony's `<|return|>`/`<|call|>`);
- *next-turn*: nothing follows the last assistant message, and in the history the turn is closed by what comes next
  (GLM-4.x: the next `<|user|>`/`<|observation|>` opener, which its generation_config lists as EOS; Apertus: an
  `<|assistant_end|>` written only before the next turn). The model stops by emitting that token, so lorakit trains
  it, appending it after a final turn the way the model would produce it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lorakit.chat_families import BY_NAME as FAMILY_NAMES
from lorakit.chat_families import TemplateChoice, choose_family_template
from lorakit.errors import ConfigError, DataError
from lorakit.io import read_text

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

REPLY = "Hello there"
PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REPLY}]
NEXT_USER = {"role": "user", "content": "And then?"}
PROBE_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PROBE_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
PROBE_RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C"}

class TemplateRenderError(ValueError):
    """The template refused a conversation (raise_exception, a missing variable, an unsupported role)."""


def default_template(tokenizer) -> str:
    return CHATML if CHATML_END in tokenizer.get_vocab() else CHATML_EOS


def template_text(tokenizer) -> str:
    """The template as one string (tokenizers may hold several named ones: default, tool_use, rag)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        return template.get("default") or next(iter(template.values()), "")
    return template


def resolve_chat_template(tokenizer, override: str | None, model_type: str | None = None) -> str:
    """Set and return the run's chat template (recipe override, tokenizer's own, or its model family's)."""
    choose_chat_template(tokenizer, override, model_type)
    return tokenizer.chat_template


def choose_chat_template(tokenizer, override: str | None, model_type: str | None = None) -> TemplateChoice:
    """Set the run's chat template on the tokenizer and say which it is and why (lorakit.chat_families).

    `model_type` is the model's config.json `model_type`: a tokenizer without a template gets its family's.
    """
    if override:
        path = Path(override).expanduser()
        if "{" not in override and path.suffix in (".jinja", ".j2", ".txt", ".jinja2"):
            if not path.is_file():
                raise ConfigError(f"model.chat_template file {path} not found", hint="give a .jinja file or inline Jinja")
            choice = TemplateChoice("recipe", f"model.chat_template file {path}", "set in the recipe",
                                    read_text(path, ConfigError, hint="save the template as UTF-8 text"))
        elif override == "chatml":
            choice = TemplateChoice("chatml", "model.chat_template: chatml", "set in the recipe",
                                    default_template(tokenizer))
        elif override in FAMILY_NAMES:
            family = FAMILY_NAMES[override]
            choice = TemplateChoice(family.name, f"model.chat_template: {family.name}", "set in the recipe",
                                    family.template)
        else:
            choice = TemplateChoice("recipe", "model.chat_template (inline)", "set in the recipe", override)
    elif getattr(tokenizer, "chat_template", None):
        choice = TemplateChoice("tokenizer", "the tokenizer's own chat template", "shipped with the model",
                                template_text(tokenizer))
    else:
        choice = choose_family_template(tokenizer, model_type)
    if choice.name != "tokenizer":  # the tokenizer's own stays as it is (it may hold several named templates)
        tokenizer.chat_template = choice.template
    try:
        render(tokenizer, PROBE)
    except TemplateRenderError as exc:
        raise ConfigError(f"the chat template does not render a plain user/assistant chat: {exc}",
                          hint=_render_hint(str(exc))) from None
    return choice


def _render_hint(message: str) -> str:
    if "is undefined" in message:
        return ("the template expects a variable lorakit does not supply (it passes messages, tools, "
                "add_generation_prompt, bos_token, eos_token); set model.chat_template to the model's standard template")
    return "check model.chat_template"


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def render(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
           tools: list[dict[str, Any]] | None = None, **template_kwargs) -> str:
    """The template's text for `messages`; raises TemplateRenderError with the template's own message.

    Rows without tools pass tools=None (a Llama 3.1 template writes its tool preamble for an empty list). Templates
    made only for tool use (Hermes tool_use, command-r tool_use) iterate `tools` unguarded; for those an empty list is
    the honest "no tools offered", so lorakit retries with one.
    """
    def apply(tool_list, chat=messages):
        return tokenizer.apply_chat_template(chat, tools=tool_list, tokenize=False,
                                             add_generation_prompt=add_generation_prompt, **template_kwargs)

    try:
        return apply(tools or None)
    except Exception as first:  # jinja2 TemplateError, TypeError from the template's own code, ...
        retries = [] if tools else [lambda: apply([])]
        if any(m.get("tool_calls") for m in messages):
            # Some templates concatenate the arguments as OpenAI's JSON string (functionary, DeepSeek-R1 distills).
            retries.append(lambda: apply(tools or None, _string_arguments(messages)))
        for retry in retries:
            try:
                return retry()
            except Exception:
                pass
        raise TemplateRenderError(str(first) or type(first).__name__) from None


def _string_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                     for c in message["tool_calls"]]
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out


class Specials(list):
    """Special token strings, longest first (so '<|im_start|>' is matched before '<|im'), with one regex for them."""

    def __init__(self, names):
        super().__init__(sorted(names, key=len, reverse=True))
        self.pattern = re.compile("|".join(re.escape(n) for n in self)) if self else None


_SPECIALS: dict[tuple, Specials] = {}


def special_tokens(tokenizer) -> Specials:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    key = (id(tokenizer), len(tokenizer), len(added), tuple(tokenizer.all_special_tokens))
    if key not in _SPECIALS:
        names = set(t for t in tokenizer.all_special_tokens if t)
        names |= {str(t) for t in added.values() if getattr(t, "special", False)}
        if not names:  # some tokenizers mark nothing special: fall back to every added token
            names = {str(t) for t in added.values()}
        _SPECIALS[key] = Specials(names)
    return _SPECIALS[key]


def _specials(specials) -> Specials:
    return specials if isinstance(specials, Specials) else Specials(specials)


def tokens_at(text: str, start: int, specials, skip_space: bool = False) -> list[tuple[str, int, int]]:
    """The run of special tokens written back to back from `start` (no text between them); with `skip_space`,
    whitespace before the first one is allowed (Apriel writes 'reply\n<|end|>')."""
    specials = _specials(specials)
    at = start
    if skip_space:
        while at < len(text) and text[at] in " \n\t":
            at += 1
    run = []
    while specials.pattern is not None:
        match = specials.pattern.match(text, at)
        if match is None:
            break
        run.append((match.group(), at, match.end()))
        at = match.end()
    return run


def find_special(text: str, specials, start: int = 0) -> list[tuple[str, int, int]]:
    """Every special-token occurrence in text[start:], left to right."""
    specials = _specials(specials)
    if specials.pattern is None:
        return []
    return [(m.group(), m.start(), m.end()) for m in specials.pattern.finditer(text, start)]


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _boundary(text: str, pos: int, specials: list[str]) -> int:
    """The last place at or before `pos` where a model's output can begin: after a newline or a special token
    (never inside one), or the start."""
    best = 0
    for token, start, end in find_special(text, specials, 0):
        if start >= pos:
            break
        if end <= pos:
            best = end
        else:
            return start  # pos is inside a special token
    newline = text.rfind("\n", 0, pos)
    return max(best, newline + 1)


def generation_split(prompt: str, final: str, anchor: int | None, specials: list[str]) -> int | None:
    """Where the model's output begins in `final` (the conversation rendered with the turn as its last message).

    `prompt` is what the model is given at inference (the generation prompt) and `anchor` where the reply (or its
    first tool call) sits in `final`.
    - Usually `prompt` is a prefix of `final`: the output is the rest.
    - Some templates prefill the generation prompt with text the rendered turn lacks (Gemma 4's empty thought
      channel, QwQ's '<think>', Command R7B's empty thinking block): the output begins where the two texts part,
      moved back to a token boundary.
    - Some render the history differently at inference (Mistral Nemo writes the system prompt only into the last
      user turn of a prompt; Hermes closes a final tool result differently): the output then begins right after the
      longest end of `prompt`, cut at a token boundary, that `final` shows before the reply.
    The later of the last two wins; None when neither finds the turn.
    """
    if final.startswith(prompt):
        return len(prompt)
    parted = _boundary(final, common_prefix(prompt, final), specials)
    if anchor is None:
        return parted
    starts = sorted({0, *(p + 1 for p, ch in enumerate(prompt) if ch == "\n")}
                    | {edge for _, a, b in find_special(prompt, specials) for edge in (a, b)})
    starts = [b for b in starts if b < len(prompt)]
    # Suffixes of prompt from these starts, longest first; if one occurs before the anchor, every shorter one does.
    low, high, found = 0, len(starts) - 1, None
    while low <= high:
        mid = (low + high) // 2
        at = final.rfind(prompt[starts[mid]:], 0, anchor)
        if at >= 0:
            found, high = at + len(prompt) - starts[mid], mid - 1
        else:
            low = mid + 1
    return max(parted, found) if found is not None else parted


@dataclass(frozen=True)
class StopConvention:
    """How assistant turns end, read off the template (and the model's EOS lists)."""

    token: str                 # the token that ends a plain assistant turn, e.g. '<|im_end|>', '<|user|>'
    token_id: int
    how: str                   # 'rendered' or 'next-turn' (see the module docstring)
    stop_ids: tuple[int, ...]  # every token that ends generation: the above, tool-call terminators, EOS lists
    stop_tokens: tuple[str, ...]  # the same, as text
    tool_call_token: str | None = None  # what ends an assistant tool-call turn when it differs (harmony <|call|>)
    opens_next_turn: bool = False  # next-turn: the token is the next turn's opener (GLM), not a late terminator
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if self.how == "next-turn":
            where = "the next turn's opener" if self.opens_next_turn else "written only when another turn follows"
            return f"{self.token!r} ({where}; lorakit appends it after a final turn)"
        return repr(self.token)


def generation_eos_ids(location: str | Path | None, revision: str | None = None) -> list[int]:
    """EOS ids from a model's generation_config.json (a local folder, or a hub id already in the cache)."""
    if location is None:
        return []
    path = Path(location) / "generation_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(location), "generation_config.json", revision=revision)
        except Exception:
            cached = None
        if not isinstance(cached, str):
            return []
        path = Path(cached)
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError, RecursionError):  # unreadable, or not a JSON object: no stops
        return []
    if isinstance(eos, int):
        return [eos]
    return [e for e in eos if isinstance(e, int)] if isinstance(eos, list) else []


def eos_ids(value: Iterable[int] | int | None) -> tuple[int, ...]:
    """An eos_token_id as generation configs write it (one id, a list, or none) as a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(i) for i in value if isinstance(i, int))


def _eos_known(tokenizer, generation_eos: tuple[int, ...]) -> list[int]:
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids += [i for i in generation_eos if i not in ids]
    return ids


_CACHE: dict[str, StopConvention] = {}


def _cache_key(tokenizer, generation_eos: tuple[int, ...]) -> str:
    blob = json.dumps([template_text(tokenizer), sorted(special_tokens(tokenizer)), tokenizer.eos_token,
                       list(generation_eos), len(tokenizer)], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def stop_convention(tokenizer, generation_eos: Iterable[int] | int | None = ()) -> StopConvention:
    """The stop convention of the tokenizer's template, knowing the model's generation_config.json eos list
    (`generation_eos`: GLM-4.x lists <|user|>, Llama 3.1 <|eom_id|>); raises DataError naming why when it has none."""
    generation_eos = eos_ids(generation_eos)
    key = _cache_key(tokenizer, generation_eos)
    if key not in _CACHE:
        _CACHE[key] = _detect(tokenizer, generation_eos)
    return _CACHE[key]


def _detect(tokenizer, generation_eos: tuple[int, ...]) -> StopConvention:
    specials = special_tokens(tokenizer)
    vocab = tokenizer.get_vocab()
    eos_known = _eos_known(tokenizer, generation_eos)
    eos_names = {tokenizer.convert_ids_to_tokens(i) for i in eos_known}
    try:
        prompt = render(tokenizer, PROBE[:1], add_generation_prompt=True)
        final = render(tokenizer, PROBE)
    except TemplateRenderError as exc:
        raise DataError(f"the chat template does not render a plain user/assistant chat: {exc}",
                        hint=_render_hint(str(exc))) from None
    at = final.rfind(REPLY)
    split = generation_split(prompt, final, at if at >= 0 else None, specials)
    if at < 0 or split is None or split > at:
        raise DataError("the chat template does not write the assistant's reply into the conversation, so no "
                        "assistant token could be trained",
                        hint="set model.chat_template to a template that renders assistant messages")

    def choose(run):
        names = [t for t, _, _ in run]
        return next((t for t in names if t in eos_names), names[0])

    run = tokens_at(final, at + len(REPLY), specials, skip_space=True)
    notes = []
    opens = False
    if run:
        how, token = "rendered", choose(run)
        end = run[-1][2]
        if _has_text(final[end:], specials) and token not in eos_names:
            # Kimi K3 closes a turn in several steps ('<|close|>response<|sep|>...<|end_of_msg|>'): the turn ends at
            # the EOS written after them. Without one, the text after the last message is another turn.
            later = [t for t in find_special(final, specials, end) if t[0] in eos_names]
            if later:
                token, end = later[0][0], later[0][2]
        if _has_text(final[end:], specials):
            raise DataError(
                "the chat template writes more after the conversation's last message "
                f"({final[end:][:60].strip()!r}...): it is a generation-time variant (tool use, RAG) that "
                "cannot render a conversation to train on",
                hint="train with the model's default chat template (set model.chat_template to it)")
    else:
        # Nothing closes the last turn: look at what follows the reply once another turn comes after it.
        try:
            history = render(tokenizer, PROBE + [NEXT_USER])
        except TemplateRenderError:
            history = ""
        h_at = history.find(REPLY)
        tail = history[h_at + len(REPLY):] if h_at >= 0 else ""
        run = tokens_at(history, h_at + len(REPLY), specials, skip_space=True) if h_at >= 0 else []
        if not run:
            after = final[at + len(REPLY):][:20] or "nothing"
            raise DataError(
                f"the chat template closes an assistant turn with plain text ({after!r}) and no special token, "
                "so the model could never learn a token that stops generation",
                hint="set model.chat_template to one whose turns end with a special token (e.g. model.chat_template: "
                     "chatml, which ends turns with <|im_end|> or the tokenizer's EOS)")
        how, token = "next-turn", choose(run)
        token_end = next(e for t, _, e in run if t == token)
        opens = history[token_end:].lstrip().startswith(NEXT_USER["content"])
        if not tail.startswith(token):
            notes.append(f"text between reply and {token}: {tail[:tail.find(token)]!r}")
    token_id = vocab.get(token)
    pieces = tokenizer(token, add_special_tokens=False).input_ids
    if token_id is None or pieces != [token_id]:
        raise DataError(f"the chat template ends assistant turns with {token!r}, but the tokenizer splits it into "
                        f"{len(pieces)} pieces, so it cannot be learned as one stop token",
                        hint=f"use the tokenizer that belongs to this template, or add {token!r} as a special token")
    stop_ids = [token_id] + [i for i in eos_known if i != token_id]
    tool_token = _tool_call_stop(tokenizer, specials, how, stop_ids)
    if tool_token is not None and vocab.get(tool_token) not in stop_ids:
        stop_ids.append(vocab[tool_token])
    names = tuple(tokenizer.convert_ids_to_tokens(i) for i in stop_ids)
    return StopConvention(token=token, token_id=token_id, how=how, stop_ids=tuple(stop_ids), stop_tokens=names,
                          tool_call_token=tool_token if tool_token != token else None,
                          opens_next_turn=how == "next-turn" and opens, notes=tuple(notes))


def _has_text(text: str, specials: list[str]) -> bool:
    for name in specials:
        text = text.replace(name, "")
    return bool(text.strip())


def _tool_call_stop(tokenizer, specials, how: str, stop_ids: list[int]) -> str | None:
    """The token that ends an assistant turn made of tool calls, when the template renders tool calls."""
    try:
        prompt = render(tokenizer, PROBE[:1], add_generation_prompt=True, tools=[PROBE_TOOL])
        final = render(tokenizer, PROBE[:1] + [PROBE_CALL], tools=[PROBE_TOOL])
    except TemplateRenderError:
        return None
    anchor = final.rfind("get_weather")
    split = generation_split(prompt, final, anchor if anchor >= 0 else None, specials)
    if split is None or anchor < split:
        return None
    stop_names = {tokenizer.convert_ids_to_tokens(i) for i in stop_ids}
    if how == "rendered":
        completion = final[split:].rstrip()
        found = find_special(completion, specials)
        # The last special tokens of the call turn, written back to back, end it.
        trailing = []
        for token, start, end in reversed(found):
            if end != (trailing[0][1] if trailing else len(completion)):
                break
            trailing.insert(0, (token, start, end))
        if not trailing:
            return None
        # Cohere writes <|END_ACTION|><|END_OF_TURN_TOKEN|> (the EOS stops); Gemma 4 <tool_call|><|tool_response>
        # (the model hands over at <|tool_response>): a known stop token if there is one, else the last.
        names = [t for t, _, _ in trailing]
        return next((t for t in names if t in stop_names), names[-1])
    try:
        history = render(tokenizer, PROBE[:1] + [PROBE_CALL, PROBE_RESULT], tools=[PROBE_TOOL])
    except TemplateRenderError:
        return None
    if not history.startswith(final):
        return None
    run = tokens_at(history, len(final), specials)
    return run[0][0] if run else None


# ---------------------------------------------------------------------------------------------------------------
# The value handed around


@dataclass(frozen=True)
class Stops:
    """Which tokens end a reply, for one tokenizer and one model: computed once (`Stops.of`) from the tokenizer and
    the model's generation_config.json eos list, then handed to whoever needs it (the data path, the generation
    config a server reads, the GGUF and Ollama exports). A tokenizer alone does not know the model's eos list, so
    nothing is read back from it."""

    eos_token_id: int | None  # the tokenizer's EOS
    generation_eos: tuple[int, ...] = ()  # the model's generation_config.json eos list
    convention: StopConvention | None = None  # None: the template has no stop token (`problem` says why)
    problem: tuple[str, str | None] | None = None  # (message, hint) of the DataError that `require` raises

    @classmethod
    def of(cls, tokenizer, generation_eos: Iterable[int] | int | None = ()) -> "Stops":
        """The stops of `tokenizer` as it is now (set its chat template first) on a model whose generation config
        lists `generation_eos`."""
        generation_eos = eos_ids(generation_eos)
        try:
            convention, problem = stop_convention(tokenizer, generation_eos), None
        except DataError as exc:
            convention, problem = None, (exc.message, exc.hint)
        return cls(tokenizer.eos_token_id, generation_eos, convention, problem)

    def require(self) -> StopConvention:
        """The convention; DataError naming why when the template has none (training on chats needs one)."""
        if self.convention is None:
            message, hint = self.problem or ("the chat template has no stop token", None)
            raise DataError(message, hint=hint)
        return self.convention

    @property
    def ids(self) -> list[int]:
        """Every token that should end generation: the end-of-turn token(s), EOS and the model's eos list."""
        ids: list[int] = list(self.convention.stop_ids) if self.convention is not None else []
        if self.eos_token_id is not None and self.eos_token_id not in ids:
            ids.append(self.eos_token_id)
        ids += [i for i in self.generation_eos if i not in ids]
        return ids

    @property
    def end_of_turn(self) -> tuple[int, str] | None:
        """(id, token) of the token that ends an assistant turn, or None when the template has none."""
        if self.convention is None:
            return None
        return self.convention.token_id, self.convention.token


def read_stops(tokenizer, folder: str | Path | None, revision: str | None = None) -> Stops:
    """The stops of a model folder (or a hub id in the cache) whose tokenizer is `tokenizer`: its
    generation_config.json says the model's own eos list."""
    return Stops.of(tokenizer, generation_eos_ids(folder, revision))


def end_of_turn_token(tokenizer, generation_eos: Iterable[int] | int | None = ()) -> tuple[int, str] | None:
    """(id, token) of the token that ends an assistant turn, or None when the template has none."""
    return Stops.of(tokenizer, generation_eos).end_of_turn


def stop_token_ids(tokenizer, generation_eos: Iterable[int] | int | None = ()) -> list[int]:
    """Every token that should end generation: the end-of-turn token(s), EOS, and the model's eos list."""
    return Stops.of(tokenizer, generation_eos).ids
