"""Released chat templates and real tokenizers, for the template tests and bench/chat_templates.py.

Templates: the released `chat_template` of each family, vendored in tests/data/templates/ (see the NOTICE there).
Tokenizers: llama.cpp's test vocabularies (`ggml-vocab-*.gguf`, real tokenizers of released models) from the
llama-cpp-python sdist on PyPI, fetched once by `make real-assets` (tests/llama_cpp_assets.py). Where llama.cpp has
no vocabulary of the family, the closest real one is used and the template's special tokens are added to it as
special tokens, as the family's own tokenizer has them. Without the fetched assets every family still runs on
lorakit's tiny built-in tokenizer with the same special tokens added (offline, a fresh clone).

Each family states independently what its model writes after the generation prompt for the reply "Paris." — the
text lorakit must train — so the tests compare lorakit's masks against the family's own output format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"

from tests.llama_cpp_assets import FETCH, models_dir  # noqa: E402,F401  (re-exported for bench/)

# Special-token shapes used by released templates: <|...|>, DeepSeek's full-width <｜...｜>, Mistral's [INST],
# Gemma's <start_of_turn> and Gemma 4's <|turn>/<turn|>, GLM's [gMASK]/<sop>, MiniMax's ]~b] family.
SPECIAL = re.compile(
    r"<\|[^<>|\s]{1,40}\|>|<｜[^<>{}]{1,40}｜>|\[/?[A-Z_]{3,30}\]|<[a-z_]{2,20}\|>|<\|[a-z_\"]{1,20}>"
    r"|<(?:start|end)_of_turn>|<(?:bos|eos|sop)>|</?s>|\[gMASK\]|\]~!?b\[|\]~b\]|\[e~\[")
# Tokens real tokenizers add as normal (not special) tokens: text the model writes, not control tokens.
NOT_SPECIAL = {"<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"}

REPLY = "Paris."


@dataclass(frozen=True)
class Family:
    name: str                     # as in the issue and the table of docs/chat-templates.md
    template: str                 # file in tests/data/templates
    vocab: str                    # llama.cpp ggml-vocab-<vocab>.gguf: the family's own, or the closest one
    own_vocab: bool
    eos: str
    output: str                   # what the model writes after the generation prompt for the reply "Paris."
    bos: str | None = None
    generation_eos: tuple[str, ...] = ()  # the model's generation_config.json eos_token_id list, as tokens
    tools: bool | str = True      # the template renders tool calls; "partial": only a conversation's first call
                                  # turn (R1-Distill-Qwen writes later ones without their opener: refused)
    system: bool = True           # the template accepts a system message
    extra: tuple[str, ...] = field(default=())  # special tokens the template does not spell out literally
    refusal: str | None = None    # lorakit refuses the template, with a message holding this
    _path: Path | None = None     # a template outside tests/data/templates (the survey)

    @property
    def stop(self) -> str:
        """The token that ends the output (the last special token of `output`)."""
        return re.findall(SPECIAL, self.output)[-1]


# Outputs are written from each family's published prompt format (model cards, Ollama's templates, TRL's training
# templates), not from lorakit's code.
FAMILIES = [
    Family("Llama 3.1", "meta-llama-Llama-3.1-8B-Instruct.jinja", "llama-bpe", True, "<|eot_id|>",
           "Paris.<|eot_id|>", bos="<|begin_of_text|>",
           generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    Family("Llama 3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja", "llama-bpe", True, "<|eot_id|>",
           "Paris.<|eot_id|>", bos="<|begin_of_text|>",
           generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    Family("Llama 3.3", "meta-llama-Llama-3.3-70B-Instruct.jinja", "llama-bpe", True, "<|eot_id|>",
           "Paris.<|eot_id|>", bos="<|begin_of_text|>",
           generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    Family("Qwen2.5", "Qwen-Qwen2.5-7B-Instruct.jinja", "qwen2", True, "<|im_end|>", "Paris.<|im_end|>"),
    # Qwen3 writes an (empty) reasoning block before the answer; history turns are rendered without it.
    Family("Qwen3 (thinking)", "Qwen-Qwen3-0.6B.jinja", "qwen2", False, "<|im_end|>",
           "<think>\n\n</think>\n\nParis.<|im_end|>"),
    # llama.cpp's copy of QwQ's template closes the think block in the generation prompt unless enable_thinking.
    Family("QwQ", "Qwen-QwQ-32B.jinja", "qwen2", False, "<|im_end|>", "Paris.<|im_end|>"),
    Family("Gemma 2", "google-gemma-2-2b-it.jinja", "gemma-4", False, "<eos>", "Paris.<end_of_turn>", bos="<bos>",
           tools=False, system=False),
    Family("Gemma 3", "google-gemma-3-it.jinja", "gemma-4", False, "<eos>", "Paris.<end_of_turn>", bos="<bos>",
           tools=False, extra=("<start_of_image>",)),
    # Gemma 4 prefills an empty thought channel in the generation prompt; the model then writes the answer.
    Family("Gemma 4", "google-gemma-4-31B-it.jinja", "gemma-4", True, "<eos>", "Paris.<turn|>", bos="<bos>"),
    Family("Mistral Nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja", "llama-spm", False, "</s>", "Paris.</s>",
           bos="<s>"),
    Family("Ministral 3", "mistralai-Ministral-3-14B-Reasoning-2512.jinja", "llama-spm", False, "</s>",
           "Paris.</s>", bos="<s>"),
    Family("Mistral Small 3.2", "Mistral-Small-3.2-24B-Instruct-2506.jinja", "llama-spm", False, "</s>",
           "Paris.</s>", bos="<s>"),
    Family("Phi-3.5", "microsoft-Phi-3.5-mini-instruct.jinja", "phi-3", True, "<|endoftext|>", "Paris.<|end|>",
           tools=False),
    # Granite 3.3's and SmolLM3's templates write no tool calls: lorakit refuses such rows, naming the turn.
    Family("Granite 3.3", "ibm-granite-granite-3.3-2B-Instruct.jinja", "gpt-2", False, "<|end_of_text|>",
           "Paris.<|end_of_text|>", tools=False),
    Family("Granite 4.0", "ibm-granite-granite-4.0.jinja", "gpt-2", False, "<|end_of_text|>",
           "Paris.<|end_of_text|>"),
    # GLM ends a turn by opening the next one; its generation_config lists the openers as EOS.
    Family("GLM-4.6", "GLM-4.6.jinja", "gpt-2", False, "<|endoftext|>", "\n<think></think>\nParis.<|user|>",
           generation_eos=("<|endoftext|>", "<|user|>", "<|observation|>")),
    Family("GLM-4.7", "GLM-4.7-Flash.jinja", "gpt-2", False, "<|endoftext|>", "</think>Paris.<|user|>",
           generation_eos=("<|endoftext|>", "<|user|>", "<|observation|>")),
    # The R1 distills prefill '<think>\n'; the model closes the reasoning block, then answers. The Llama distill's
    # template cannot render tool calls (it concatenates the arguments object to a string). llama.cpp's copy of
    # the Qwen distill's template also closes it ('</think>') unless enable_thinking is set.
    Family("DeepSeek R1 (Qwen distill)", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "qwen2", False,
           "<｜end▁of▁sentence｜>", "Paris.<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>",
           tools="partial"),
    Family("DeepSeek R1 (Llama distill)", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "llama-bpe", False,
           "<｜end▁of▁sentence｜>", "\n</think>\n\nParis.<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>",
           tools=False),
    Family("DeepSeek V3.1", "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek-llm", False, "<｜end▁of▁sentence｜>",
           "Paris.<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>"),
    Family("SmolLM3", "HuggingFaceTB-SmolLM3-3B.jinja", "llama-bpe", False, "<|im_end|>",
           "Paris.<|im_end|>", tools=False),
    # The tool_use template of Command R+ appends its tool instructions after the last message, whatever it is.
    Family("Command R+", "CohereForAI-c4ai-command-r-plus-tool_use.jinja", "command-r", True,
           "<|END_OF_TURN_TOKEN|>", "Paris.<|END_OF_TURN_TOKEN|>", bos="<BOS_TOKEN>",
           refusal="generation-time variant"),
    Family("Command R7B", "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "command-r", True,
           "<|END_OF_TURN_TOKEN|>", "<|START_RESPONSE|>Paris.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
           bos="<BOS_TOKEN>"),
    Family("gpt-oss (harmony)", "openai-gpt-oss-120b.jinja", "gpt-2", False, "<|return|>",
           "<|channel|>final<|message|>Paris.<|return|>",
           generation_eos=("<|return|>", "<|endoftext|>", "<|call|>")),
    # Named in the issue as refused before: tool-use template that needs `tools`, MiniMax, Apertus.
    Family("Hermes 3 (tool_use)", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "llama-bpe", False,
           "<|im_end|>", "Paris.<|im_end|>", bos="<|begin_of_text|>"),
    Family("MiniMax-M2", "MiniMax-M2.jinja", "gpt-2", False, "[e~[", "\n</think>\n\nParis.[e~["),
    Family("Apertus", "Apertus-8B-Instruct.jinja", "gpt-2", False, "<|assistant_end|>", "Paris.<|assistant_end|>"),
]

BY_NAME = {f.name: f for f in FAMILIES}
BY_TEMPLATE = {f.template: f for f in FAMILIES}

# For the survey of templates outside the family list: the closest real vocabulary, and the EOS of the model's
# tokenizer where the template does not use `eos_token` itself.
OTHER_EOS = {"Seed-OSS": "<seed:eos>", "MiniMax-M1": "<end_of_sentence>", "MiniMax": "[e~[", "Kimi-K3": "<|end_of_msg|>",
             "Kimi": "<|im_end|>",
             "Apriel": "<|end|>", "Cohere2": "<|END_OF_TURN_TOKEN|>", "Spark": "<｜end▁of▁sentence｜>",
             "Laguna": "</assistant>", "GigaChat": "<|message_sep|>", "Hy3": "<｜hy_eos:opensource｜>"}
OTHER_SPECIALS = {"MiniMax-M1": ("<beginning_of_sentence>", "<end_of_sentence>", "<begin_of_document>"),
                  "Seed-OSS": ("<seed:bos>", "<seed:eos>", "<seed:think>", "</seed:think>"),
                  "Laguna": ("<system>", "</system>", "<user>", "</user>", "<assistant>", "</assistant>"),
                  "Hy3": tuple(f"<｜hy_{t}:opensource｜>" for t in ("Assistant", "User", "begin_of_sentence", "eos")),
                  "Reka": ("<sep>",), "Nemotron-Nano-v2": ("<SPECIAL_10>", "<SPECIAL_11>", "<SPECIAL_12>")}


def guess_family(path: Path) -> Family:
    """The family of a template file, or a stand-in built from its name (vocabulary, EOS, special tokens)."""
    if path.name in BY_TEMPLATE:
        return BY_TEMPLATE[path.name]
    name, text = path.name, path.read_text()
    lower = name.lower()
    if "command-r" in lower or "cohere" in lower:
        vocab = "command-r"
    elif "phi-3" in lower:
        vocab = "phi-3"
    elif "qwen3.5" in lower:
        vocab = "qwen35"
    elif "llama" in lower and "deepseek" not in lower or "hermes" in lower or "functionary" in lower \
            or "firefunction" in lower:
        vocab = "llama-bpe"
    elif "qwen" in lower or "qwq" in lower or "<|im_start|>" in text:
        vocab = "qwen2"
    elif "deepseek" in lower:
        vocab = "deepseek-llm"
    elif "mistral" in lower or "devstral" in lower:
        vocab = "llama-spm"
    elif "gemma" in lower:
        vocab = "gemma-4"
    else:
        vocab = "gpt-2"
    eos = next((v for k, v in OTHER_EOS.items() if k in name), None)
    extra = next((v for k, v in OTHER_SPECIALS.items() if k in name), ())
    return Family(name, name, vocab, False, eos or "", "", extra=tuple(extra), tools=True, _path=path)


def template_text(family: Family) -> str:
    return (family._path or TEMPLATES / family.template).read_text()


def special_tokens_of(family: Family, text: str | None = None) -> list[str]:
    text = template_text(family) if text is None else text
    found = set(SPECIAL.findall(text)) | set(family.extra)
    for token in (family.eos, family.bos, *family.generation_eos):
        if token:
            found.add(token)
    return sorted(found - NOT_SPECIAL)


def dress_tokenizer(tokenizer, family: Family, template: str | None = None):
    """Give a real (or the tiny) tokenizer the family's special tokens (its generation EOS among them), EOS/BOS and
    template. Which of them stop the model is the family's Stops (`family_stops`)."""
    from tokenizers import AddedToken

    template = template_text(family) if template is None else template
    specials = special_tokens_of(family, template)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    vocab = tokenizer.get_vocab()
    normal = [t for t in NOT_SPECIAL if t in template and t not in vocab]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in normal])
    if family.eos:
        tokenizer.eos_token = family.eos
    if family.bos:
        tokenizer.bos_token = family.bos
    tokenizer.chat_template = template
    return tokenizer


def generation_eos(family: Family, tokenizer) -> list[int]:
    """The family's generation_config.json eos list, as ids of `tokenizer` (dressed for the family)."""
    return [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]


def family_stops(family: Family, tokenizer):
    """The Stops a model of this family has: its tokenizer's and its generation config's."""
    from lorakit.chat_template import Stops

    return Stops.of(tokenizer, generation_eos(family, tokenizer))


_TINY = []


def tiny_tokenizer():
    """lorakit's built-in tokenizer (trained locally on the bundled corpus, no download); a fresh copy each call."""
    import copy

    from lorakit.tiny import TinySpec, build_tokenizer

    if not _TINY:
        tok = build_tokenizer(TinySpec())
        tok.chat_template = None
        tok.model_max_length = 1 << 20  # released templates write long system preambles
        _TINY.append(tok)
    return copy.deepcopy(_TINY[0])


_FAMILY_TOKENIZERS: dict = {}


def family_tokenizer(family: Family, real: bool = True):
    """The family's tokenizer: its real (or closest real) vocabulary when the llama.cpp assets are fetched,
    else the tiny built-in one; None when `real` is asked for and the assets are missing. Shared between callers
    (loading a 256k vocabulary takes seconds): do not change it; dress a tiny_tokenizer() copy instead."""
    key = (family.name, family.template, real)
    if key not in _FAMILY_TOKENIZERS:
        _FAMILY_TOKENIZERS[key] = _family_tokenizer(family, real)
    return _FAMILY_TOKENIZERS[key]


def _family_tokenizer(family: Family, real: bool):
    from lorakit.model import ensure_pad_token

    if real:
        from tests.llama_cpp_assets import vocab_tokenizer

        tokenizer = vocab_tokenizer(family.vocab)
        if tokenizer is None:
            return None
    else:
        tokenizer = tiny_tokenizer()
    dress_tokenizer(tokenizer, family)
    ensure_pad_token(tokenizer)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Conversations the checks use


def chat(reply: str = REPLY, system: bool = True) -> list[dict]:
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": reply}]
    return ([{"role": "system", "content": "Answer in one short sentence."}] if system else []) + messages


def two_turns(system: bool = True) -> list[dict]:
    return chat("Paris.", system) + [{"role": "user", "content": "And of Germany?"},
                                     {"role": "assistant", "content": "Berlin."}]


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def tool_chat() -> list[dict]:
    # Call ids are 9 alphanumerics: Mistral's templates refuse any other shape.
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call00001", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "18 degrees and sunny"},
        {"role": "assistant", "content": "It is 18 degrees and sunny in Paris."},
    ]


# ---------------------------------------------------------------------------------------------------------------
# Masks: what lorakit trains, compared with what the family's model writes

def canonical(messages: list[dict], tools: list[dict] | None = None) -> dict:
    """A chat in lorakit's canonical row shape (data/formats.py), as `data check` would produce it."""
    extras = [{k: v for k, v in m.items() if k not in ("role", "content")} for m in messages]
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "train_from": 0,
            "prompt": "", "completion": "", "extras": json.dumps(extras) if any(extras) else "",
            "tools": json.dumps(tools) if tools else ""}


def trained_segments(tokenizer, example: dict) -> list[str]:
    segments, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            current.append(token)
        elif current:
            segments.append(tokenizer.decode(current))
            current = []
    if current:
        segments.append(tokenizer.decode(current))
    return segments


def matches(segment: str, expected: str) -> bool:
    """A trained segment is the expected output; a first token that also holds the end of the prompt (a newline
    merged with the output's first newline, as R1's '<think>\\n' + '\\n</think>') counts as the output's."""
    if segment == expected:
        return True
    return segment.endswith(expected[1:]) and expected[0] in "\n " and segment[: len(segment) - len(expected) + 1].strip() == ""


def expected_output(family: Family, reply: str) -> str:
    return family.output.replace(REPLY, reply)


def check_masks(family: Family, tokenizer) -> tuple[bool, str]:
    """(ok, why not) for the family's one-turn, two-turn and tool chats."""
    from lorakit.chat_template import stop_convention
    from lorakit.data.tokenize import encode_row

    convention = stop_convention(tokenizer, generation_eos(family, tokenizer))
    cases = [("one turn", chat(system=family.system), None, [REPLY]),
             ("two turns", two_turns(system=family.system), None, ["Paris.", "Berlin."])]
    if family.tools:
        cases.append(("tool call", tool_chat(), [WEATHER_TOOL],
                      [None, "It is 18 degrees and sunny in Paris."]))
    for label, messages, tools, replies in cases:
        examples = encode_row(canonical(messages, tools), tokenizer, "assistant", 8192, convention)
        errors = [e["error"] for e in examples if e["error"]]
        if errors:
            return False, f"{label}: {errors[0]}"
        segments = [s for e in examples for s in trained_segments(tokenizer, e)]
        if len(segments) != len(replies):
            return False, f"{label}: {len(segments)} trained segments for {len(replies)} assistant turns: {segments}"
        untrained = {m["content"] for m in messages if m["role"] != "assistant" and len(m["content"]) > 3}
        for reply in replies:
            if reply is None:  # the tool call: its name and arguments, ending in a stop token, nothing of the result
                segment = next((s for s in segments if "get_weather" in s), None)
                if segment is None or not any(segment.endswith(t) for t in convention.stop_tokens):
                    return False, f"{label}: the tool call is not trained through a stop token: {segments}"
                if "18 degrees" in segment:
                    return False, f"{label}: the tool result is trained: {segment!r}"
                continue
            want = expected_output(family, reply)
            if not any(matches(s, want) for s in segments):
                return False, f"{label}: expected {want!r} trained, got {segments}"
        leaked = [u for u in untrained for s in segments if u in s and not any(u in (r or "") for r in replies)]
        if leaked:
            return False, f"{label}: prompt text is trained: {leaked[0]!r}"
    return True, ""



# ---------------------------------------------------------------------------------------------------------------
# Ollama: render a Modelfile TEMPLATE with Go's text/template (when a Go toolchain is installed)

OLLAMA_RENDER = Path(__file__).resolve().parent / "data" / "ollama" / "render.go"


def go_available() -> bool:
    import shutil

    return shutil.which("go") is not None


def go_render(template: str, cases: list[tuple[list[dict], bool | None]]) -> list[str]:
    """Render `template` for each (messages, think) the way Ollama executes a TEMPLATE (tests/data/ollama)."""
    import json
    import os
    import subprocess
    import tempfile

    payload = {"template": template, "cases": [{"messages": m, "think": t} for m, t in cases]}
    env = {**os.environ, "GOCACHE": os.environ.get("GOCACHE") or os.path.join(tempfile.gettempdir(), "lorakit-gocache"),
           "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
    result = subprocess.run(["go", "run", str(OLLAMA_RENDER)], input=json.dumps(payload), capture_output=True,
                            text=True, env=env, check=True, timeout=300)
    return json.loads(result.stdout)


def hf_prompt(tokenizer, messages: list[dict], think: bool | None = None) -> str:
    """The Jinja template's generation prompt for `messages`, without the BOS llama.cpp adds itself."""
    from lorakit.chat_template import render

    kwargs = {} if think is None else {"enable_thinking": think}
    text = render(tokenizer, messages, add_generation_prompt=True, **kwargs)
    bos = tokenizer.bos_token or ""
    return text[len(bos):] if bos and text.startswith(bos) else text


def ollama_chats(system: bool = True) -> list[tuple[list[dict], bool | None]]:
    one = chat(system=False)[:-1]
    sys_one = chat(system=True)[:-1]
    multi = two_turns(system=False) + [{"role": "user", "content": "And of Italy?"}]
    sys_multi = two_turns(system=True) + [{"role": "user", "content": "And of Italy?"}]
    cases = [(one, None), (multi, None), (one, True), (one, False)]
    if system:
        cases += [(sys_one, None), (sys_multi, None)]
    return cases
