"""The Ollama Modelfile: a Go TEMPLATE read off the model's own chat template, checked against it."""

from __future__ import annotations

import pytest

from lorakit.chat_template import CHATML, stop_convention
from lorakit.errors import ModelError
from lorakit.export.modelfile import CHECKS, expected, modelfile, read_layout

from .. import families as fam

REFUSED = {"gpt-oss (harmony)": "harmony", "Command R+": "generation-time variant"}


def template_of(text: str) -> str:
    return text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]


@pytest.mark.parametrize("family", fam.FAMILIES, ids=lambda f: f.name)
def test_modelfile_per_family_or_an_exact_reason(family):
    tokenizer = fam.family_tokenizer(family, real=False)
    family_stops = fam.family_stops(family, tokenizer)
    if family.name in REFUSED:
        with pytest.raises(ModelError, match=REFUSED[family.name]) as info:
            modelfile("model-q8_0.gguf", None, tokenizer=tokenizer, stops=family_stops)
        assert info.value.hint
        return
    text, _ = modelfile("model-q8_0.gguf", None, "Be brief.", tokenizer, family_stops)
    assert text.startswith("FROM ./model-q8_0.gguf\nTEMPLATE \"\"\"")
    stops = [line.split(" ", 2)[2].strip('"') for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == list(stop_convention(tokenizer, fam.generation_eos(family, tokenizer)).stop_tokens)
    assert stops[0] == family.stop
    assert text.rstrip().endswith('SYSTEM """Be brief."""')
    # BOS is the GGUF's to add (tokenizer.ggml.add_bos_token), never the TEMPLATE's.
    assert not (tokenizer.bos_token and tokenizer.bos_token in template_of(text))


@pytest.mark.parametrize("family", [f for f in fam.FAMILIES if f.name not in REFUSED], ids=lambda f: f.name)
def test_template_pieces_rebuild_the_jinja_renders(family):
    """The Python twin of the TEMPLATE gives the Jinja template's own prompts, BOS aside."""
    tokenizer = fam.family_tokenizer(family, real=False)
    layout = read_layout(tokenizer)
    for messages, _ in fam.ollama_chats(family.system):
        assert expected(layout, messages) == fam.hf_prompt(tokenizer, messages)


@pytest.mark.skipif(not fam.go_available(), reason="needs a Go toolchain to run text/template as Ollama does "
                                                   "(apt install golang-go)")
@pytest.mark.parametrize("family", [f for f in fam.FAMILIES if f.name not in REFUSED], ids=lambda f: f.name)
def test_go_renders_the_template_as_the_jinja_template_does(family):
    """Go's text/template, executed the way Ollama does, renders the prompts the model was trained on: with and
    without a system prompt, several turns, and Ollama's think flag on/off (Qwen3, GLM, Gemma 4, SmolLM3...)."""
    tokenizer = fam.family_tokenizer(family, real=False)
    text, _ = modelfile("model.gguf", None, tokenizer=tokenizer, stops=fam.family_stops(family, tokenizer))
    cases = fam.ollama_chats(family.system)
    rendered = fam.go_render(template_of(text), cases)
    for (messages, think), got in zip(cases, rendered):
        assert got == fam.hf_prompt(tokenizer, messages, think), (messages, think)


def test_irregular_layout_is_refused_with_what_differs():
    tokenizer = fam.tiny_tokenizer()
    # A template that marks turns after the fourth: the probes look regular, longer chats do not.
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{% if loop.index > 4 %}#{% endif %}{{ m['role'] }}"
                               "\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ModelError, match="depends on more than the roles"):
        read_layout(tokenizer)


def test_lorakit_chatml_default():
    tokenizer = fam.tiny_tokenizer()
    tokenizer.chat_template = CHATML
    layout = read_layout(tokenizer)
    assert (layout.start, layout.user_assistant, layout.generation) == (
        "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n<|im_start|>assistant\n")
    assert all(expected(layout, m) for m in CHECKS)
