"""A base tokenizer without a chat template gets its model family's turn format (when its vocabulary has the family's
turn tokens), the stop token that format ends turns with is trained, the choice is named with its reason, and the
Ollama TEMPLATE follows it; with no family's tokens, ChatML's are added as special tokens."""

from __future__ import annotations

import pytest
from tokenizers import AddedToken

from lorakit.chat_families import FAMILIES, added_token_ids
from lorakit.chat_template import choose_chat_template, stop_convention
from lorakit.data.tokenize import IGNORE, encode_example
from lorakit.export.modelfile import modelfile
from lorakit.model import ensure_pad_token
from lorakit.tiny import TinySpec, build_tokenizer

# (model_type, tokens the family's base vocabulary has, expected family, stop token, what the generation prompt ends)
CASES = [
    ("gemma3_text", ["<start_of_turn>", "<end_of_turn>"], "gemma", "<end_of_turn>", "<start_of_turn>model\n"),
    ("llama", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "llama3", "<|eot_id|>",
     "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("qwen2", ["<|im_start|>", "<|im_end|>"], "chatml", "<|im_end|>", "<|im_start|>assistant\n"),
    ("phi3", ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"], "phi3", "<|end|>", "<|assistant|>\n"),
    ("mistral", [], "mistral", "<|endoftext|>", "[/INST]"),
]
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"},
                     {"role": "assistant", "content": "Madrid."}], "train_from": 0, "prompt": "", "completion": ""}


def base_tokenizer(tokens: list[str]):
    """The tiny byte-level tokenizer as a base model ships it: no chat template, the family's turn tokens special."""
    tokenizer = build_tokenizer(TinySpec())
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)
    tokenizer.chat_template = None
    ensure_pad_token(tokenizer)
    return tokenizer


def without_chatml_tokens():
    """A tokenizer trained like the tiny one but with no ChatML tokens at all (like GPT-2 or Pythia)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lorakit.tiny import corpus_lines

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    ensure_pad_token(tokenizer)
    return tokenizer


@pytest.mark.parametrize("model_type, tokens, family, stop, generation", CASES, ids=[c[2] for c in CASES])
def test_a_base_tokenizer_gets_its_family_template_and_its_stop_token_is_trained(model_type, tokens, family, stop,
                                                                                generation):
    tokenizer = base_tokenizer(tokens)
    choice = choose_chat_template(tokenizer, None, model_type)
    assert choice.name == family and choice.added_tokens == ()
    assert model_type in choice.line() and "no chat template" in choice.reason
    convention = stop_convention(tokenizer)
    assert convention.token == stop
    prompt = tokenizer.apply_chat_template(CHAT["messages"][:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(generation)
    encoded = encode_example(CHAT, tokenizer, "assistant", 512)
    trained = [tokenizer.decode([t]) for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE]
    stop_id = tokenizer.convert_tokens_to_ids(stop)
    assert [t for t in encoded["labels"] if t == stop_id] == [stop_id, stop_id]  # both turns end with it, trained
    assert "".join(trained).strip().startswith("Paris.")
    assert "Capital" not in "".join(trained) and "Be brief" not in "".join(trained)
    for token in tokens:  # every turn marker is one token, never text
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]


def test_the_gemma_base_does_not_get_chatml_as_text():
    tokenizer = base_tokenizer(["<start_of_turn>", "<end_of_turn>"])
    choose_chat_template(tokenizer, None, "gemma3_text")
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert "<|im_start|>" not in rendered and rendered.count("<start_of_turn>model\n") == 2
    assert "<start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>" in rendered  # system folded in


def test_a_llama_architecture_with_chatml_tokens_gets_chatml_and_says_why(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    choice = choose_chat_template(tokenizer, None, "llama")
    assert choice.name == "chatml"
    assert "llama3's turn tokens" in choice.reason and "<|im_start|>/<|im_end|>" in choice.reason


def test_no_family_tokens_means_chatml_with_added_special_tokens():
    tokenizer = without_chatml_tokens()
    before = len(tokenizer)
    choice = choose_chat_template(tokenizer, None, "gpt2")
    assert choice.name == "chatml+added" and choice.added_tokens == ("<|im_start|>", "<|im_end|>")
    assert len(tokenizer) == before + 2 and added_token_ids(tokenizer, choice) == [before, before + 1]
    assert "trained" in choice.reason
    assert stop_convention(tokenizer).token == "<|im_end|>"
    encoded = encode_example(CHAT, tokenizer, "assistant", 512)
    assert encoded["labels"].count(before + 1) == 2  # the new <|im_end|> is trained at both turn ends


def test_the_recipe_can_name_a_family():
    tokenizer = base_tokenizer(["<start_of_turn>", "<end_of_turn>"])
    choice = choose_chat_template(tokenizer, "gemma", "llama")
    assert choice.name == "gemma" and choice.source == "model.chat_template: gemma"


@pytest.mark.parametrize("family", [f for f in FAMILIES], ids=[f.name for f in FAMILIES])
def test_the_ollama_template_follows_each_family_format(family):
    tokens = {"gemma": CASES[0][1], "llama3": CASES[1][1], "chatml": CASES[2][1], "phi3": CASES[3][1]}.get(
        family.name, [])
    tokenizer = base_tokenizer(tokens)
    choose_chat_template(tokenizer, family.name, None)
    text, _ = modelfile("model.gguf", None, None, tokenizer)
    stop = stop_convention(tokenizer).token
    assert f'PARAMETER stop "{stop}"' in text
    for token in family.turn_tokens:
        assert token in text
