"""The tokenizer decisions of GGUF import and export that need no model: names, prefixes, scores, edits."""

import pytest

from lorakit.errors import ModelError
from lorakit.export.gguf_vocab import adds_space_prefix, llama_cpp_name, merge_ranks, pre_tokenizer_name
from lorakit.gguf_source import SPM_PREPEND, match_llama_cpp

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
DIGITS = {"type": "Digits", "individual_digits": True}


def sequence(*parts):
    return {"type": "Sequence", "pretokenizers": list(parts)}


def test_byte_level_pre_tokenizers_get_the_name_llama_cpp_knows_them_by():
    assert pre_tokenizer_name({"pre_tokenizer": sequence(DIGITS, BYTE_LEVEL)}, "llama") == "smollm"
    assert pre_tokenizer_name({"pre_tokenizer": BYTE_LEVEL}, "llama") == "gpt-2"
    llama3 = {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                                                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"}}
    assert pre_tokenizer_name({"pre_tokenizer": sequence(llama3, dict(BYTE_LEVEL, use_regex=False))}, "llama") \
        == "llama-bpe"
    with pytest.raises(ModelError, match=r"pre-tokenizer \(Whitespace\) is not one lorakit can name"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}}, "llama")


def test_sentencepiece_prefix_space_is_read_from_the_tokenizer():
    assert adds_space_prefix({"normalizer": SPM_PREPEND, "pre_tokenizer": None})  # Llama 2, Phi-3
    assert adds_space_prefix({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}})
    assert not adds_space_prefix({"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
                                  "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}}})  # Gemma


def test_scores_follow_the_merge_order():
    ranks = merge_ranks({"model": {"merges": [["\u2581", "t"], "e r", ["\u2581t", "h"], ["e", "r"]]}})
    assert ranks == {"\u2581t": 0, "er": 1, "\u2581th": 2}


def test_the_gguf_name_makes_llama_cpp_strip_after_special_tokens_exactly_when_the_tokenizer_does():
    rstrip = {"added_tokens": [{"content": "<|user|>", "special": True, "rstrip": True}]}
    keep = {"added_tokens": [{"content": "<|user|>", "special": True, "rstrip": False}]}
    assert "phi3" in llama_cpp_name("merged", rstrip)
    assert llama_cpp_name("phi3-merged", keep) == "Phi 3-merged"
    assert llama_cpp_name("merged", keep) == "merged"


def test_an_unpacked_tokenizer_is_edited_to_cut_text_as_llama_cpp_does():
    smollm = {"pre_tokenizer": BYTE_LEVEL, "model": {"type": "BPE"}}
    assert match_llama_cpp(smollm, {"tokenizer.ggml.pre": "smollm"}) == ["digits split one by one (smollm)"]
    assert smollm["pre_tokenizer"]["pretokenizers"][0] == DIGITS
    llama3 = {"pre_tokenizer": sequence(BYTE_LEVEL), "model": {"type": "BPE", "ignore_merges": False}}
    assert match_llama_cpp(llama3, {"tokenizer.ggml.pre": "llama-bpe"}) and llama3["model"]["ignore_merges"]
    spm = {"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}, "normalizer": None,
           "model": {"type": "BPE"}}
    assert match_llama_cpp(spm, {"tokenizer.ggml.model": "llama"}) == [
        "SentencePiece prefix space after special tokens"]
    assert spm["normalizer"] == SPM_PREPEND and spm["pre_tokenizer"] is None
    no_prefix = {"pre_tokenizer": {"type": "Metaspace"}, "model": {"type": "BPE"}}
    assert match_llama_cpp(no_prefix, {"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_space_prefix": False}) == []
    phi3 = {"added_tokens": [{"content": "<|user|>", "special": True}, {"content": "<s>", "special": True}],
            "model": {"type": "BPE"}}
    assert match_llama_cpp(phi3, {"general.name": "Phi3"}) == ["whitespace after special tokens stripped (Phi-3)"]
    assert [t.get("rstrip") for t in phi3["added_tokens"]] == [True, None]
