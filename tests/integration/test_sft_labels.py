"""Completion-only labels token by token, and the mask/EOS lint."""

import json

import pytest
from transformers import AutoTokenizer

from lorakit.chat_template import end_of_turn_token, resolve_chat_template
from lorakit.config import DataSection
from lorakit.data.checks import lint_collated
from lorakit.data.sft import prepare_sft_data
from lorakit.data.tokenize import IGNORE, encode_example
from lorakit.errors import DataError
from lorakit.model import ensure_pad_token

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@pytest.fixture()
def tokenizer(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    resolve_chat_template(tok, None)
    ensure_pad_token(tok)
    return tok


def trained_text(tokenizer, encoded):
    return [tokenizer.decode([t]) for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE]


def test_base_model_without_template_gets_chatml(tokenizer):
    assert "<|im_start|>" in tokenizer.chat_template
    assert end_of_turn_token(tokenizer)[1] == "<|im_end|>"


def test_only_assistant_tokens_and_end_of_turn_are_trained(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
    ]
    eot_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    encoded = encode_example({"messages": messages, "train_from": 0, "prompt": "", "completion": ""},
                             tokenizer, "assistant", 512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert len(ids) == len(labels)
    # Token by token: a label is either the token itself or ignored.
    assert all(label in (IGNORE, tid) for tid, label in zip(ids, labels))
    text = "".join(trained_text(tokenizer, encoded))
    # The reply and the stop token, never the newline the template writes after it (nothing predicts it).
    assert text == "The capital of France is Paris.<|im_end|>2 plus 3 is 5.<|im_end|>"
    # Nothing of the system or user turns, nor the assistant header, is trained.
    untrained = tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE])
    assert "Be brief." in untrained and "What is 2 plus 3?" in untrained and "<|im_start|>assistant" in untrained
    assert labels.count(eot_id) == 2 and encoded["stop_trained"]


def test_prompt_completion_train_from_skips_prompt_assistant_turns(tokenizer):
    messages = [
        {"role": "user", "content": "Say a."},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "Say b."},
        {"role": "assistant", "content": "b"},
    ]
    encoded = encode_example({"messages": messages, "train_from": 2, "prompt": "", "completion": ""},
                             tokenizer, "assistant", 512)
    assert "".join(trained_text(tokenizer, encoded)) == "b<|im_end|>"


def test_raw_completion_appends_and_trains_eos(tokenizer):
    encoded = encode_example({"messages": [], "train_from": 0, "prompt": "Question: hi\nAnswer:", "completion": " yes"},
                             tokenizer, "assistant", 512)
    assert "".join(trained_text(tokenizer, encoded)) == " yes<|endoftext|>"
    assert encoded["input_ids"][0] == tokenizer.bos_token_id  # raw text gets the tokenizer's BOS


def test_train_on_all(tokenizer):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    encoded = encode_example({"messages": messages, "train_from": 0, "prompt": "", "completion": ""},
                             tokenizer, "all", 512)
    assert encoded["labels"] == encoded["input_ids"]


def test_a_llama3_style_template_masks_its_headers(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>",
                                                                "<|eot_id|>"]})
    resolve_chat_template(tokenizer, LLAMA3_TEMPLATE)
    eot_id, eot = end_of_turn_token(tokenizer)
    assert eot == "<|eot_id|>"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    encoded = encode_example({"messages": messages, "train_from": 0, "prompt": "", "completion": ""},
                             tokenizer, "assistant", 512)
    assert "".join(trained_text(tokenizer, encoded)) == "Hello<|eot_id|>"


def write(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_lint_fails_on_examples_with_no_trained_token(tokenizer, tmp_path):
    long_user = "word " * 200
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": long_user}, {"role": "assistant", "content": "a"}]},
    ]
    with pytest.raises(DataError) as info:
        prepare_sft_data(DataSection(train=write(tmp_path, rows), max_length=32), tokenizer, seed=0)
    assert "1 example(s) have no trained token (rows 2)" in info.value.message
    assert "cut at max_length=32" in info.value.message


def test_a_reply_cut_at_max_length_is_a_counted_warning_naming_the_rows(tokenizer, tmp_path, monkeypatch):
    """Issue 19: an assistant turn longer than max_length trained silently truncated; now it trains and says so."""
    import lorakit.data.sft as sft

    said = []
    monkeypatch.setattr(sft, "warn", said.append)  # lorakit's console line, collected
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 200}]},
    ]
    data = write(tmp_path, rows)
    prepared = prepare_sft_data(DataSection(train=data, max_length=32), tokenizer, seed=0)
    assert len(prepared.train) == 2
    assert len(said) == 1 and f"{data}" in said[0] and "1 example(s) are longer than data.max_length=32" in said[0]
    assert "(rows 2)" in said[0]
    said.clear()
    prepare_sft_data(DataSection(train=data, max_length=1024), tokenizer, seed=0)
    assert said == []


def test_lint_fails_when_the_template_never_trains_a_stop_token(tokenizer, tmp_path):
    # A template that closes assistant turns with nothing the model can learn to emit.
    template = ("{%- for m in messages %}{{- m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}")
    resolve_chat_template(tokenizer, template)
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(DataError) as info:
        prepare_sft_data(DataSection(train=write(tmp_path, rows)), tokenizer, seed=0)
    # The refusal says what is wrong with the template, quoting what it writes; it never names a None token.
    assert "closes an assistant turn with plain text ('\\n') and no special token" in info.value.message
    assert "None" not in info.value.message and "chatml" in info.value.hint


class MaskingCollator:
    """The classic bug: labels derived from input_ids with every pad-token position masked."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, examples):
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.tensor([e["input_ids"] + [self.pad_id] * (width - len(e["input_ids"])) for e in examples])
        labels = ids.clone()
        labels[ids == self.pad_id] = IGNORE
        return {"input_ids": ids, "labels": labels}


def test_collator_lint_catches_pad_equal_to_eos(tokenizer, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [{"text": "short"}, {"text": "a much longer piece of text than the other"}]
    data = prepare_sft_data(DataSection(train=write(tmp_path, rows)), tokenizer, seed=0)
    eos = tokenizer.eos_token_id
    # TRL's collator pads labels separately, so EOS survives even when pad == EOS.
    assert lint_collated(DataCollatorForLanguageModeling(pad_token_id=eos), data.train, eos, eos) == []
    problems = lint_collated(MaskingCollator(eos), data.train, eos, eos)
    assert problems and "pad token is the EOS token" in problems[0][0]
