"""The tokenizer part of a GGUF: what llama.cpp needs to tokenize exactly as the model was trained.

Two kinds of tokenizer.json map onto llama.cpp's tokenizers:
- byte-level BPE (Llama 3, Qwen2, SmolLM, GPT-2): tokens, merges, and the pre-tokenizer by the name llama.cpp knows
  it by (`tokenizer.ggml.pre`); llama.cpp has the regexes built in, so the name must be right.
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Phi-3, Gemma): llama.cpp's SPM tokenizer merges the
  adjacent pair whose result has the best *score*. Scores come from tokenizer.model when the folder has it; otherwise
  (transformers v5 does not write tokenizer.model, and tokenizers loaded from GGUF never had one) from the merge
  order of tokenizer.json, which is what the scores were turned into in the first place. Without them every token
  scores the same and llama.cpp merges left to right: the text is cut differently than in training.

The BOS flag is written explicitly from what training saw: llama.cpp adds BOS by default for SentencePiece and
Llama-3 vocabularies, so a chat template without BOS (ChatML) would get one at inference that training never saw.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from lorakit.chat_template import PROBE, end_of_turn_token
from lorakit.errors import ModelError

# gguf-py's SpecialVocab guesses the BOS/SEP/EOS flags from tokenizer.json's TemplateProcessing and warns about pair
# templates it cannot parse ("Unknown separator token '<|begin_of_text|>' in TemplateProcessing<pair>" for every
# Llama 3 tokenizer); lorakit replaces those flags with what training saw, so the warnings concern values discarded.
GGUF_VOCAB_LOGGER = "gguf.vocab"


class _TemplateGuessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "TemplateProcessing" not in record.getMessage()


@contextlib.contextmanager
def _template_guesses_dropped():
    logger, dropped = logging.getLogger(GGUF_VOCAB_LOGGER), _TemplateGuessFilter()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)

# Pre-tokenizer regexes llama.cpp knows by name, as they appear in tokenizer.json (a distinctive part of each)
PRE_TOKENIZERS = [
    ("llama-bpe", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"),
    ("qwen2", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"),
    ("qwen35", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"),
    ("tekken", r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
               r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"),
]
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _pre_parts(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    return pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer_name(tokenizer_json: dict[str, Any], model_type: str) -> str:
    """The name llama.cpp gives this byte-level BPE pre-tokenizer."""
    pre = tokenizer_json.get("pre_tokenizer")
    text = json.dumps(pre or {})
    for name, pattern in PRE_TOKENIZERS:
        if json.dumps(pattern)[1:-1] in text:
            return name
    kinds = [part.get("type") for part in _pre_parts(pre)]
    byte_level_regex = any(part.get("type") == "ByteLevel" and part.get("use_regex", True) for part in _pre_parts(pre))
    # StarCoder/SmolLM: single digits, then GPT-2's regex (llama.cpp: smollm = starcoder = refact)
    digits = [part for part in _pre_parts(pre) if part.get("type") == "Digits"]
    if kinds == ["Digits", "ByteLevel"] and digits[0].get("individual_digits") and byte_level_regex:
        return "smollm"
    if kinds == ["ByteLevel"] and byte_level_regex:
        return "gpt-2"
    if model_type in ("qwen2", "qwen3") and not kinds:
        return "qwen2"
    raise ModelError(f"the tokenizer's pre-tokenizer ({', '.join(k or '?' for k in kinds) or 'none'}) is not one "
                     "lorakit can name for llama.cpp (llama-bpe, qwen2, qwen35, tekken, smollm, gpt-2)",
                     hint="export with --format bnb-4bit instead, or convert with llama.cpp's convert_hf_to_gguf.py")


PHI3_NAMES = ("phi-3", "phi3")


def llama_cpp_name(name: str, tokenizer_json: dict[str, Any]) -> str:
    """general.name, such that llama.cpp strips whitespace after special tokens exactly when this tokenizer does.

    llama.cpp decides that (RSTRIP) from the model's name, not from the file: a name containing "phi-3"/"phi3" turns
    it on for every special token. A merged Phi-3 in a folder called "out/merged" would lose it, a model in a folder
    called "phi3-test" whose tokenizer keeps the whitespace would gain it.
    """
    rstrip = any(t.get("special") and t.get("rstrip") for t in tokenizer_json.get("added_tokens", []))
    says_phi3 = any(tag in name.lower() for tag in PHI3_NAMES)
    if rstrip and not says_phi3:
        return f"{name} (phi3 tokenizer)"
    if says_phi3 and not rstrip:
        return re.sub(r"(?i)phi-?3", "Phi 3", name)
    return name


def is_sentencepiece_style(tokenizer_json: dict[str, Any]) -> bool:
    model = tokenizer_json.get("model", {})
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def adds_space_prefix(tokenizer_json: dict[str, Any]) -> bool:
    """Whether text gets a leading "▁" before tokenizing (Llama 2, Mistral, Phi-3 yes; Gemma no)."""
    for part in _pre_parts(tokenizer_json.get("pre_tokenizer")):
        if part.get("type") == "Metaspace":
            return part.get("prepend_scheme", "always") in ("always", "first") and part.get("add_prefix_space", True)
    normalizer = tokenizer_json.get("normalizer") or {}
    parts = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    return any(part.get("type") == "Prepend" and part.get("prepend") == "\u2581" for part in parts)


def merge_ranks(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    """token -> rank of the first merge that produces it."""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(tokenizer_json["model"].get("merges", [])):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        ranks.setdefault(left + right, rank)
    return ranks


def sentencepiece_scores(folder: Path) -> dict[str, float] | None:
    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        return None
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor(model_file=str(model_file))
    return {processor.id_to_piece(i): processor.get_score(i) for i in range(processor.vocab_size())}


def build_token_list(folder: Path, tokenizer_json: dict[str, Any], tokenizer, vocab_size: int, spm: bool):
    """(tokens, types, scores or None) for ids 0..vocab_size-1, ids the tokenizer lacks padded as UNUSED."""
    import gguf

    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    unk = tokenizer_json["model"].get("unk_token")
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    scores_by_piece = sentencepiece_scores(folder) if spm else None
    ranks = merge_ranks(tokenizer_json) if spm and scores_by_piece is None else {}
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        token = id_to_token.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
            continue
        tokens.append(token)
        if i in added:
            kind = gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
        elif spm and BYTE_TOKEN.fullmatch(token):
            kind = gguf.TokenType.BYTE
        elif token == unk:
            kind = gguf.TokenType.UNKNOWN
        else:
            kind = gguf.TokenType.NORMAL
        types.append(kind)
        if scores_by_piece is not None:
            scores.append(scores_by_piece.get(token, 0.0))
        elif kind == gguf.TokenType.NORMAL and spm:
            # the earlier a token's merge, the better its score; pieces no merge makes (single characters) are
            # never the result of a merge, so their score only has to stay below every merged one
            scores.append(-float(ranks.get(token, len(ranks) + i)))
        else:
            scores.append(0.0)
    return tokens, types, (scores if spm else None)


def adds_bos(tokenizer) -> bool:
    """Whether llama.cpp should put BOS in front of what it tokenizes.

    As the tokenizer itself does (the official converter's rule, and what raw-text training saw) - but never when
    the chat template does not itself start with BOS: lorakit tokenizes rendered chats without special tokens, so a
    ChatML model whose tokenizer would add BOS trained without one, and llama.cpp (which strips a BOS the template
    wrote and adds its own) would otherwise put one in front of every chat.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    default = tokenizer("x")["input_ids"]
    if not default or default[0] != bos:
        return False
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(PROBE, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return bool(ids) and ids[0] == bos
    return True


def add_vocab(writer, folder: Path, config: dict[str, Any], tokenizer) -> dict[str, Any]:
    """Write the tokenizer metadata; returns what was decided (for the export manifest and tests)."""
    import gguf

    vocab_size = config["vocab_size"]
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    kind = tokenizer_json.get("model", {}).get("type")
    if kind != "BPE":
        raise ModelError(f"{folder}/tokenizer.json: {kind} tokenizers have no GGUF mapping in lorakit",
                         hint="byte-level BPE and SentencePiece-style BPE (byte fallback) are supported")
    spm = is_sentencepiece_style(tokenizer_json)
    tokens, types, scores = build_token_list(folder, tokenizer_json, tokenizer, vocab_size, spm)
    if spm:
        writer.add_tokenizer_model("llama")
        pre = "default"
        writer.add_tokenizer_pre(pre)
        writer.add_add_space_prefix(adds_space_prefix(tokenizer_json))
    else:
        writer.add_tokenizer_model("gpt2")
        pre = pre_tokenizer_name(tokenizer_json, config["model_type"])
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if scores is not None:
        writer.add_token_scores(scores)
    with _template_guesses_dropped():
        special_vocab = gguf.SpecialVocab(folder, load_merges=not spm, n_vocab=vocab_size)
    bos = adds_bos(tokenizer)
    special_vocab.add_special_token = {"bos": bos, "eos": False}
    special_vocab.add_to_gguf(writer, quiet=True)
    eot = end_of_turn_token(tokenizer) if tokenizer.chat_template else None
    if eot is not None:
        writer.add_eot_token_id(eot[0])
    return {"tokenizer": "llama (SentencePiece)" if spm else "gpt2 (byte-level BPE)", "pre": pre, "add_bos": bos,
            "scores": ("tokenizer.model" if (folder / "tokenizer.model").is_file() else "merge order") if spm else None,
            "eot": eot[1] if eot else None}
