"""Released chat templates through lorakit's real data path, per family.

Each family runs twice: on lorakit's tiny tokenizer with the template's special tokens added (always, offline), and
on its real (or closest real) tokenizer from llama.cpp's test vocabularies (skipped until `make real-assets`).
The masks are compared with what each family's model writes after its generation prompt (tests/families.py).
"""

from __future__ import annotations

import json

import pytest

from lorakit.chat_template import generation_eos_ids, stop_convention, stop_token_ids
from lorakit.config import DataSection
from lorakit.data.sft import tokenize_source
from lorakit.data.tokenize import encode_row
from lorakit.errors import DataError

from .. import families as fam
from ..conftest import EXAMPLES

# The real vocabularies (128k-250k tokens) take minutes to load across the families: slow tier.
VOCABS = ["tiny", pytest.param("real", marks=pytest.mark.slow)]


def tokenizer_for(family, vocab):
    tokenizer = fam.family_tokenizer(family, real=vocab == "real")
    if tokenizer is None:
        pytest.skip(f"llama.cpp's real tokenizers are not fetched: {fam.FETCH}")
    return tokenizer


@pytest.fixture(params=VOCABS)
def vocab(request):
    return request.param


@pytest.mark.parametrize("family", [f for f in fam.FAMILIES if not f.refusal], ids=lambda f: f.name)
def test_masks_train_exactly_what_the_model_writes(family, vocab):
    tokenizer = tokenizer_for(family, vocab)
    ok, why = fam.check_masks(family, tokenizer)
    assert ok, why


@pytest.mark.parametrize("family", [f for f in fam.FAMILIES if not f.refusal], ids=lambda f: f.name)
def test_stop_token_is_the_one_the_family_stops_on(family, vocab):
    tokenizer = tokenizer_for(family, vocab)
    convention = stop_convention(tokenizer, fam.generation_eos(family, tokenizer))
    assert convention.token == family.stop
    assert convention.token_id in stop_token_ids(tokenizer, fam.generation_eos(family, tokenizer))
    assert tokenizer.convert_ids_to_tokens(convention.token_id) == family.stop


@pytest.mark.parametrize("family", fam.FAMILIES, ids=lambda f: f.name)
def test_bundled_chats_pass_the_data_check_or_are_refused_by_row(family, vocab, tmp_path):
    """examples/data/chat-messages.jsonl through tokenize_source and its lint, as `lorakit data check` runs it."""
    tokenizer = tokenizer_for(family, vocab)
    stops = fam.family_stops(family, tokenizer)
    path = str(EXAMPLES / "chat-messages.jsonl")
    if family.refusal:
        with pytest.raises(DataError, match=family.refusal) as info:
            tokenize_source(path, DataSection(train=path), tokenizer, stops=stops)
        assert info.value.hint
        return
    if not family.system:
        # Gemma 2's template raises on system messages: the rows that have one are named, with what to do.
        with pytest.raises(DataError) as info:
            tokenize_source(path, DataSection(train=path), tokenizer, stops=stops)
        assert "cannot be rendered (rows 1, 5" in info.value.message and "System role not supported" in info.value.message
        assert "no system role" in info.value.hint
        return
    tokenized, fmt, _, _ = tokenize_source(path, DataSection(train=path), tokenizer, stops=stops)
    assert fmt == "messages" and len(set(tokenized["row"])) == 50
    assert all(tokenized["stop_trained"]) and min(tokenized["num_trained"]) > 0


@pytest.mark.parametrize("family", [f for f in fam.FAMILIES if not f.refusal], ids=lambda f: f.name)
def test_tool_call_chats_train_calls_and_replies_or_are_refused_by_row(family):
    """examples/data/tool-calls.jsonl: templates with a tool-call format train the calls and replies, never the
    results; templates without one refuse those rows by number instead of training empty turns."""
    tokenizer = fam.family_tokenizer(family, real=False)
    stops = fam.family_stops(family, tokenizer)
    path = str(EXAMPLES / "tool-calls.jsonl")
    if family.refusal:
        return
    data = DataSection(train=path, max_length=8192)  # Command R7B's tool preamble is long in the tiny vocabulary
    if not family.tools:
        with pytest.raises(DataError, match=r"row\(s\) cannot be rendered \(rows 1, 2, 3"):
            tokenize_source(path, data, tokenizer, stops=stops)
        return
    if family.tools == "partial":
        with pytest.raises(DataError, match=r"1 row\(s\) cannot be rendered \(rows 6\)"):
            tokenize_source(path, data, tokenizer, stops=stops)
        return
    tokenized, _, _, _ = tokenize_source(path, data, tokenizer, stops=stops)
    rows = [json.loads(line) for line in open(path)]
    for example in tokenized:
        trained = "".join(fam.trained_segments(tokenizer, example))
        for message in rows[example["row"]]["messages"]:
            if message["role"] == "tool":
                result = message["content"] if isinstance(message["content"], str) else json.dumps(message["content"])
                assert result not in trained
    trained_all = "".join("".join(fam.trained_segments(tokenizer, e)) for e in tokenized)
    for name in ("get_weather", "convert_currency", "Madrid is clear and 25 degrees.", "Lisbon"):
        assert name in trained_all


def test_refusal_names_what_the_template_writes_never_none(tmp_path):
    """A Llama 3 template on a tokenizer that lacks <|eot_id|>: the turn ends in text no token can stop."""
    family = fam.BY_NAME["Llama 3.1"]
    tokenizer = fam.tiny_tokenizer()
    tokenizer.chat_template = fam.template_text(family)
    with pytest.raises(DataError) as info:
        stop_convention(tokenizer)
    assert "'<|eot_id|>" in info.value.message and "None" not in info.value.message
    assert "chatml" in info.value.hint


def test_glm_stops_on_the_next_turn_opener_from_its_generation_config(tmp_path):
    """GLM-4.6 writes nothing after a reply; its generation_config lists <|user|> and <|observation|> as EOS."""
    family = fam.BY_NAME["GLM-4.6"]
    tokenizer = fam.tiny_tokenizer()
    fam.dress_tokenizer(tokenizer, family)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [
        tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]}))
    convention = stop_convention(tokenizer, generation_eos_ids(tmp_path))
    assert convention.how == "next-turn" and convention.token == "<|user|>" and convention.opens_next_turn
    assert convention.tool_call_token == "<|observation|>"
    assert set(convention.stop_tokens) == {"<|user|>", "<|endoftext|>", "<|observation|>"}
    # The final turn gets the opener appended (as GLM's own fine-tuning code does); a middle turn trains the real one.
    examples = encode_row(fam.canonical(fam.two_turns()), tokenizer, "assistant", 4096, convention)
    assert len(examples) == 1
    assert fam.trained_segments(tokenizer, examples[0]) == ["\n<think></think>\nParis.<|user|>",
                                                            "\n<think></think>\nBerlin.<|user|>"]
    assert examples[0]["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|user|>")


def test_history_rendered_differently_trains_each_turn_as_the_final_one():
    """Qwen3 strips the reasoning block from earlier turns: each is trained as it is written at inference, as the
    last turn of its own prefix, and the lint names source rows, not examples."""
    family = fam.BY_NAME["Qwen3 (thinking)"]
    tokenizer = fam.family_tokenizer(family, real=False)
    messages = fam.two_turns()
    messages[2]["reasoning_content"] = "The capital of France is Paris."
    examples = encode_row(fam.canonical(messages), tokenizer, "assistant", 4096,
                          stop_convention(tokenizer, fam.generation_eos(family, tokenizer)))
    segments = sorted(s for e in examples for s in fam.trained_segments(tokenizer, e))
    assert segments == ["<think>\n\n</think>\n\nBerlin.<|im_end|>",
                        "<think>\nThe capital of France is Paris.\n</think>\n\nParis.<|im_end|>"]
    # Turn 1 is not trained in the conversation where it appears stripped of its reasoning.
    full = next(e for e in examples if "Berlin" in tokenizer.decode(e["input_ids"]))
    assert "Paris.<|im_end|>" not in "".join(fam.trained_segments(tokenizer, full))


def test_open_reasoning_prompt_is_closed_by_the_output():
    """The DeepSeek-R1 distills prefill '<think>\\n' and drop reasoning from what they render: the trained output is
    the reasoning, '</think>', then the answer."""
    family = fam.BY_NAME["DeepSeek R1 (Llama distill)"]
    tokenizer = fam.family_tokenizer(family, real=False)
    messages = fam.chat("<think>\nFrance's capital.\n</think>\n\nParis.")
    examples = encode_row(fam.canonical(messages), tokenizer, "assistant", 4096,
                          stop_convention(tokenizer, fam.generation_eos(family, tokenizer)))
    text = "".join(fam.trained_segments(tokenizer, examples[0]))
    assert text.endswith("France's capital.\n</think>\n\nParis.<｜end▁of▁sentence｜>")
    assert tokenizer.decode(examples[0]["input_ids"]).count("<think>") == 1


def test_val_split_keeps_a_conversations_examples_together(tmp_path):
    from lorakit.data.prepared import split_by_row

    family = fam.BY_NAME["Qwen3 (thinking)"]
    tokenizer = fam.family_tokenizer(family, real=False)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"messages": fam.two_turns()}) + "\n" for _ in range(10)))
    tokenized, _, _, _ = tokenize_source(str(path), DataSection(train=str(path)), tokenizer,
                                         stops=fam.family_stops(family, tokenizer))
    assert len(tokenized) == 20  # two examples per row
    train, held = split_by_row(tokenized, 0.2, seed=0)
    assert not set(train["row"]) & set(held["row"]) and len(set(held["row"])) == 2
