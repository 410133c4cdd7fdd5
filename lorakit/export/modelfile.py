"""The Ollama Modelfile of an export: a Go TEMPLATE that renders chats the way the model's own chat template does.

Ollama does not run Jinja. Rather than keeping a hand-written Go template per family (which drifts from the model's
real template: Llama 3.1's date header, Qwen2.5's default system prompt, GLM's history turns that differ from the
generation prompt), lorakit reads the pieces off the model's template by rendering probe chats with marker texts:
what comes before the first message, between each pair of roles, and after the last user message (the generation
prompt, with its thinking on/off variants). The TEMPLATE writes those pieces around Ollama's messages. Before it is
written, the pieces are checked to reproduce the Jinja template's own renders of other chats exactly; a template
whose layout depends on more than the roles (harmony channels, a system prompt moved into the last user turn in
ways the pieces cannot express) gets an error saying so.

What the TEMPLATE leaves out, on purpose:
- BOS: llama.cpp adds it from the GGUF's tokenizer.ggml.add_bos_token, so writing it again would double it.
- Tool calling: Ollama parses a model's tool calls only for templates it knows; the TEMPLATE renders conversations
  (system, user, assistant), which is what a fine-tune served through Ollama needs. Serve tools with llama.cpp's
  server (--jinja uses the embedded chat template) or vLLM.
- Today's date: templates that write it (Llama 3.2, gpt-oss) get the export date written in; Go templates in
  Ollama have no clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date

from lorakit.chat_template import Stops, TemplateRenderError, render
from lorakit.errors import DataError, ModelError

SYSTEM, USER1, ASSISTANT1, USER2, ASSISTANT2, USER3 = (
    "SYSTEMTEXT7", "USERTEXT1Q", "ASSISTANTTEXT1A", "USERTEXT2Q", "ASSISTANTTEXT2A", "USERTEXT3Q")
ROLES = ("user", "assistant")


@dataclass
class Layout:
    """The literal pieces of a chat template, keyed by what comes before and after them."""

    start: str = ""                # before the first user message, with no system message
    start_system: str = ""         # before the system text
    system_user: str = ""          # between the system text and the first user message
    user_assistant: str = ""       # after a user message, before an assistant reply in the history
    assistant_user: str = ""       # after an assistant reply, before the next user message
    generation: str = ""           # after the last user message: the generation prompt
    system: str = "first"          # where the system text goes: first, last-user (Mistral Nemo), none (Gemma 2)
    notes: list[str] = field(default_factory=list)


def _render(tokenizer, messages, **kwargs) -> str:
    try:
        return render(tokenizer, messages, **kwargs)
    except TemplateRenderError as exc:
        raise ModelError(f"the chat template does not render a plain chat for the Ollama TEMPLATE: {exc}",
                         hint="pass --no-modelfile, or set a standard chat template") from None


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _between(text: str, *markers: str) -> list[str]:
    """The pieces of `text` around the markers, which must appear in this order: [before, between..., after]."""
    pieces, at = [], 0
    for marker in markers:
        found = text.find(marker, at)
        if found < 0:
            raise ValueError(marker)
        pieces.append(text[at:found])
        at = found + len(marker)
    pieces.append(text[at:])
    return pieces


def _strip_bos(piece: str, bos: str) -> str:
    return piece[len(bos):] if bos and piece.startswith(bos) else piece


def read_layout(tokenizer, **kwargs) -> Layout:
    """The template's pieces, read from probe renders (ModelError when the layout is not regular). `kwargs` are
    template variables (enable_thinking)."""
    probe = _render(tokenizer, [_msg("user", USER1)], add_generation_prompt=True, **kwargs)
    if "<|channel|>" in probe + _render(tokenizer, [_msg("user", USER1), _msg("assistant", ASSISTANT1)], **kwargs):
        raise ModelError(
            "gpt-oss (harmony) writes its answer in channels (<|channel|>final<|message|>...), which Ollama only "
            "parses with its own built-in gpt-oss handling, not through a Modelfile TEMPLATE",
            hint="create the Ollama model from Ollama's gpt-oss template, or serve the GGUF with llama.cpp "
                 "(llama-server --jinja parses harmony); pass --no-modelfile")
    bos = tokenizer.bos_token or ""
    chat = [_msg("user", USER1), _msg("assistant", ASSISTANT1), _msg("user", USER2)]
    try:
        start, ua, au, gen = _between(_render(tokenizer, chat, add_generation_prompt=True, **kwargs),
                                      USER1, ASSISTANT1, USER2)
    except ValueError as exc:
        raise ModelError(f"the chat template drops the text {exc} of a probe chat, so its layout cannot be read",
                         hint="pass --no-modelfile") from None
    layout = Layout(start=_strip_bos(start, bos), user_assistant=ua, assistant_user=au, generation=gen)
    try:
        with_system = render(tokenizer, [_msg("system", SYSTEM)] + chat, add_generation_prompt=True, **kwargs)
    except TemplateRenderError:
        layout.system = "none"
        layout.notes.append("the template has no system role: the TEMPLATE leaves Ollama's system prompt out")
        with_system = None
    if with_system is not None and with_system.find(SYSTEM) > with_system.find(USER1):
        # Mistral Nemo: the system text opens the last user turn of a prompt.
        layout.system = "last-user"
        try:
            start_s, ua_s, au_s, sep, gen_s = _between(with_system, USER1, ASSISTANT1, SYSTEM, USER2)
        except ValueError:
            raise ModelError("the chat template places the system prompt where the TEMPLATE cannot follow it",
                             hint="write the Modelfile TEMPLATE by hand, or pass --no-modelfile") from None
        layout.system_user = sep
        if (_strip_bos(start_s, bos), ua_s, au_s, gen_s) != (layout.start, ua, au, gen):
            raise ModelError("the chat template writes the turns differently when a system prompt is given, so one "
                             "Ollama TEMPLATE cannot reproduce it", hint="pass --no-modelfile")
    elif with_system is not None:
        try:
            start_system, system_user, ua_s, au_s, gen_s = _between(with_system, SYSTEM, USER1, ASSISTANT1, USER2)
        except ValueError as exc:
            raise ModelError(f"the chat template drops the text {exc} of a probe chat, so its layout cannot be read",
                             hint="pass --no-modelfile") from None
        layout.start_system, layout.system_user = _strip_bos(start_system, bos), system_user
        if (ua_s, au_s, gen_s) != (ua, au, gen):
            raise ModelError("the chat template writes the turns differently when a system prompt is given, so one "
                             "Ollama TEMPLATE cannot reproduce it", hint="pass --no-modelfile")
    today = [date.today().strftime(f) for f in ("%d %b %Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y")]
    if any(d in piece for d in today for piece in (layout.start, layout.start_system)):
        layout.notes.append(f"the template writes today's date; the TEMPLATE holds the export date "
                            f"({date.today().isoformat()})")
    _check(tokenizer, layout, kwargs)
    return layout


def expected(layout: Layout, messages: list[dict[str, str]]) -> str:
    """What the TEMPLATE renders for `messages` (the Python twin of go_template, used to check the pieces)."""
    out, prev = [], ""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if system and layout.system == "first":
        out += [layout.start_system, system]
        prev = "system"
    turns = [m for m in messages if m["role"] in ROLES]
    for i, message in enumerate(turns):
        role = message["role"]
        if role == "user":
            out.append({"": layout.start, "system": layout.system_user, "assistant": layout.assistant_user}[prev])
            if system and layout.system == "last-user" and i == len(turns) - 1:
                out += [system, layout.system_user]
        elif prev == "user":
            out.append(layout.user_assistant)
        out.append(message["content"])
        prev = role
    if prev == "user":
        out.append(layout.generation)
    return "".join(out)


CHECKS = [
    [_msg("user", USER1)],
    [_msg("system", SYSTEM), _msg("user", USER1)],
    [_msg("user", USER1), _msg("assistant", ASSISTANT1), _msg("user", USER2), _msg("assistant", ASSISTANT2),
     _msg("user", USER3)],
    [_msg("system", SYSTEM), _msg("user", USER1), _msg("assistant", ASSISTANT1), _msg("user", USER2),
     _msg("assistant", ASSISTANT2), _msg("user", USER3)],
]


def _check(tokenizer, layout: Layout, kwargs: dict) -> None:
    """The pieces must rebuild the Jinja template's renders of chats they were not read from."""
    bos = tokenizer.bos_token or ""
    for messages in CHECKS:
        if layout.system == "none" and messages[0]["role"] == "system":
            continue
        want = _strip_bos(_render(tokenizer, messages, add_generation_prompt=True, **kwargs), bos)
        have = expected(layout, messages)
        if want != have:
            at = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            roles = "/".join(m["role"] for m in messages)
            raise ModelError(
                f"the chat template's layout depends on more than the roles (a {roles} chat renders "
                f"{want[max(0, at - 20):at + 30]!r} where its pieces give {have[max(0, at - 20):at + 30]!r}), "
                "so an Ollama TEMPLATE built from them would not match it",
                hint="write the Modelfile TEMPLATE by hand, or pass --no-modelfile")


def _go(text: str) -> str:
    """A Go string literal action (JSON's escapes are valid Go), so whitespace trimming never touches the text."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _go_body(layout: Layout) -> list[str]:
    system_first = layout.system == "first"
    last_user = ""
    if layout.system == "last-user":
        last_user = "{{ if and $.System $last }}{{ $.System }}" + _go(layout.system_user) + "{{ end }}"
    return [
        '{{- $prev := "" }}',
        ("{{- if .System }}" + _go(layout.start_system) + '{{ .System }}{{ $prev = "system" }}{{ end }}')
        if system_first else "",
        "{{- range $i, $_ := .Messages }}",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{- if eq .Role "user" }}{{ if eq $prev "" }}' + _go(layout.start)
        + ('{{ else if eq $prev "system" }}' + _go(layout.system_user) if system_first else "")
        + '{{ else if eq $prev "assistant" }}' + _go(layout.assistant_user)
        + "{{ end }}" + last_user + '{{ .Content }}{{ $prev = "user" }}',
        '{{- else if eq .Role "assistant" }}{{ if eq $prev "user" }}' + _go(layout.user_assistant)
        + '{{ end }}{{ .Content }}{{ $prev = "assistant" }}',
        "{{- end }}",
        "{{- end }}",
        '{{- if eq $prev "user" }}' + _go(layout.generation) + "{{ end }}",
    ]


def go_template(default: Layout, think: Layout | None = None, no_think: Layout | None = None) -> str:
    """The Ollama TEMPLATE. Templates that change with enable_thinking (Qwen3, Gemma 4's system <|think|>, SmolLM3's
    reasoning mode, GLM) get one body per setting of Ollama's think flag; unset means the template's default."""
    bodies = [_go_body(layout) for layout in (default, think or default, no_think or default)]
    if bodies[0] == bodies[1] == bodies[2]:
        return "\n".join(line for line in bodies[0] if line)
    join = lambda body: "\n".join(line for line in body if line)  # noqa: E731
    return ("{{- if $.IsThinkSet }}{{- if $.Think }}\n" + join(bodies[1]) + "\n{{- else }}\n" + join(bodies[2])
            + "\n{{- end }}{{- else }}\n" + join(bodies[0]) + "\n{{- end }}")


def modelfile(gguf_name: str, chat_template=None, system_prompt: str | None = None,
              tokenizer=None, stops: Stops | None = None) -> tuple[str, str]:
    """The Modelfile text and a one-line description of what its TEMPLATE reproduces.

    `stops`: the model's (lorakit.chat_template.read_stops of the folder being exported: its generation_config.json
    lists every token that ends a reply, Llama 3.1's <|eom_id|> among them); one PARAMETER stop line each. Without
    them, the tokenizer's own stops (its template and EOS)."""
    if tokenizer is None or not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise ModelError("the model has no chat template, so no Ollama TEMPLATE can be written",
                         hint="set model.chat_template in the training recipe, or pass --no-modelfile")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    layout = read_layout(tokenizer)
    variants = []
    for enabled in (True, False):
        try:
            variant = read_layout(tokenizer, enable_thinking=enabled)
        except ModelError:
            variant = layout  # a template that breaks on the flag: Ollama's think flag changes nothing
        variants.append(variant if variant != layout else None)
    template = go_template(layout, *variants)
    if stops is None or chat_template is not None:
        stops = Stops.of(tokenizer, stops.generation_eos if stops is not None else ())
    try:
        stop_tokens = list(stops.require().stop_tokens)
    except DataError as exc:
        raise ModelError(f"no stop token for the Ollama Modelfile: {exc.message}", hint=exc.hint) from None
    if '"""' in template:
        raise ModelError("the chat template's text holds \"\"\", which a Modelfile TEMPLATE cannot quote",
                         hint="pass --no-modelfile")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stop_tokens]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    description = "pieces of the model's chat template" + (f"; {'; '.join(layout.notes)}" if layout.notes else "")
    return "\n".join(lines) + "\n", description


def family_of(template: str) -> str | None:
    """A short name for a template, for reports ('chatml', 'llama3', ...); None when none fits."""
    for name, markers in (("chatml", ("<|im_start|>", "<|im_end|>")), ("llama3", ("<|start_header_id|>",)),
                          ("gemma", ("<start_of_turn>",)), ("gemma4", ("<|turn>",)), ("phi3", ("<|end|>", "<|user|>")),
                          ("mistral", ("[INST]",)), ("glm", ("<|assistant|>", "[gMASK]")),
                          ("deepseek", ("<｜Assistant｜>",)), ("granite", ("<|start_of_role|>",)),
                          ("cohere", ("<|START_OF_TURN_TOKEN|>",)), ("harmony", ("<|channel|>",))):
        if all(m in template for m in markers):
            return name
    return None

