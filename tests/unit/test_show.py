"""`data check --show`: the rendered example marks exactly the tokens whose labels are not -100 (the labels training
uses), for chats, tool calls, raw text and preference pairs; --json gives ids, strings and flags; a prompt alone
(GRPO) shows nothing trained."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from transformers import AutoTokenizer

from lorakit.chat_template import choose_chat_template, stop_convention
from lorakit.data.preference import encode_pair
from lorakit.data.show import explain_example, print_explained
from lorakit.data.tokenize import IGNORE, encode_row
from lorakit.model import ensure_pad_token

from ..conftest import EXAMPLES, REPO
from ..families import canonical
from ..helpers import invoke

QWEN = REPO / "tests" / "data" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"


@pytest.fixture()
def tokenizer(tiny_llama):
    def load(template=None):
        tok = AutoTokenizer.from_pretrained(tiny_llama)
        choice = choose_chat_template(tok, template, "llama")
        ensure_pad_token(tok)
        return tok, choice

    return load


def rows():
    chats = [json.loads(line) for line in open(EXAMPLES / "chat-messages.jsonl")]
    tools = [json.loads(line) for line in open(EXAMPLES / "tool-calls.jsonl")]
    return {
        "system + one turn": (None, canonical(chats[0]["messages"])),
        "two turns": (None, canonical(chats[-1]["messages"])),
        "tool calls (Qwen2.5 template)": (str(QWEN), canonical(tools[0]["messages"], tools[0]["tools"])),
        "raw text": (None, {"messages": [], "train_from": 0, "prompt": "Question: 2 plus 3?\nAnswer:",
                            "completion": " 5.", "extras": "", "tools": ""}),
    }


@pytest.mark.parametrize("name", list(rows()))
def test_show_marks_exactly_the_positions_training_labels(tokenizer, name):
    template, row = rows()[name]
    tok, choice = tokenizer(template)
    convention = stop_convention(tok) if row["messages"] else None
    expected = encode_row(row, tok, "assistant", 2048, convention)  # Qwen's tool preamble alone is ~600 tokens
    shown = explain_example(tok, choice, row, max_length=2048)
    assert len(shown.sequences) == len(expected)
    for sequence, example in zip(shown.sequences, expected):
        assert [t.id for t in sequence.tokens] == example["input_ids"]
        assert [t.trained for t in sequence.tokens] == [label != IGNORE for label in example["labels"]]
        assert sequence.trained == example["num_trained"] > 0
        assert set(sequence.trained_by_role()) == ({"completion"} if name == "raw text" else {"assistant"})
    if row["messages"]:
        assert shown.stop == stop_convention(tok).describe()
        assert shown.template["name"] == choice.name


def test_train_on_all_counts_every_role(tokenizer):
    tok, choice = tokenizer()
    _, row = rows()["system + one turn"]
    shown = explain_example(tok, choice, row, train_on="all")
    counts = shown.sequences[0].trained_by_role()
    assert set(counts) == {"system", "user", "assistant"} and sum(counts.values()) == len(shown.sequences[0].tokens)


def test_a_preference_pair_shows_chosen_and_rejected_with_their_completions_trained(tokenizer):
    tok, choice = tokenizer()
    pair = {"prompt": [{"role": "user", "content": "What is the capital of Peru?"}],
            "chosen": [{"role": "assistant", "content": "The capital of Peru is Lima."}],
            "rejected": [{"role": "assistant", "content": "I do not know."}]}
    encoded = encode_pair(pair, tok, 512, None, stop_convention(tok))
    shown = explain_example(tok, choice, pair)
    assert [s.name for s in shown.sequences] == ["chosen", "rejected"]
    for sequence in shown.sequences:
        completion = encoded[f"{sequence.name}_ids"]
        assert [t.id for t in sequence.tokens] == encoded["prompt_ids"] + completion
        assert [t.trained for t in sequence.tokens] == [False] * len(encoded["prompt_ids"]) + [True] * len(completion)
        assert sequence.tokens[-1].text == "<|im_end|>" and sequence.tokens[-1].trained


def test_a_prompt_alone_trains_nothing_and_names_the_stop(tokenizer):
    tok, choice = tokenizer()
    shown = explain_example(tok, choice, {"prompt": [{"role": "user", "content": "Hi"}]})
    assert shown.sequences[0].trained == 0 and shown.stop == "'<|im_end|>'"
    assert "".join(t.text for t in shown.sequences[0].tokens).endswith("<|im_start|>assistant\n")


def test_without_colour_the_trained_runs_are_bracketed(tokenizer):
    tok, choice = tokenizer()
    _, row = rows()["two turns"]
    buffer = io.StringIO()
    print_explained(Console(file=buffer, no_color=True, width=200), explain_example(tok, choice, row))
    text = buffer.getvalue()
    runs = text.split("⟦")[1:]
    assert len(runs) == 2 and all("⟧" in run for run in runs)
    assert [run.split("⟧")[0] for run in runs] == [row["messages"][1]["content"] + "<|im_end|>",
                                                   row["messages"][3]["content"] + "<|im_end|>"]


def test_data_check_show_json_gives_ids_strings_and_flags(tiny_llama):
    result = invoke("data", "check", EXAMPLES / "chat-messages.jsonl", "--model", tiny_llama, "--show", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["chat template"].startswith("chatml") and report["stop token"] == "'<|im_end|>'"
    assert [e["row"] for e in report["examples"]] == [1, 2]
    sequence = report["examples"][0]["sequences"][0]
    assert len(sequence["token_ids"]) == len(sequence["tokens"]) == len(sequence["trained_mask"])
    assert sum(sequence["trained_mask"]) == sequence["trained"] == sum(sequence["trained_by_role"].values())
    assert "".join(t for t, m in zip(sequence["tokens"], sequence["trained_mask"]) if m) == \
        "The capital of France is Paris.<|im_end|>"
    shown = invoke("data", "check", EXAMPLES / "chat-messages.jsonl", "--model", tiny_llama, "--show", "1")
    assert "⟦The capital of France is Paris.<|im_end|>⟧" in shown.output and "stop token" in shown.output


def test_show_needs_a_model():
    from ..helpers import assert_clean_error

    assert_clean_error(invoke("data", "check", EXAMPLES / "chat-messages.jsonl", "--show", "1"), "--show needs --model")
