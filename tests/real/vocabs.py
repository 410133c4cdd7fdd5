"""Tiny random models around real released vocabularies (llama.cpp's ggml-vocab-*.gguf), and the vectors llama.cpp
itself checks its tokenizers with (.inp/.out)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.real import artifacts


@dataclass(frozen=True)
class Vocab:
    name: str  # ggml-vocab-<name>.gguf
    arch: str  # the transformers architecture of the tiny model built around it
    template: str | None  # a chat template file under models/templates/ (None: the vocabulary's own)
    family: str


VOCABS = [
    Vocab("llama-bpe", "llama", "meta-llama-Llama-3.2-3B-Instruct.jinja", "Llama 3 (byte-level BPE, 128k)"),
    Vocab("llama-spm", "llama", "mistralai-Mistral-Nemo-Instruct-2407.jinja", "Llama 2 / Mistral (SentencePiece, 32k)"),
    Vocab("qwen2", "qwen2", None, "Qwen2 / Qwen2.5 (byte-level BPE, 152k)"),
    Vocab("phi-3", "phi3", None, "Phi-3 (SentencePiece, 32k)"),
    Vocab("gemma-4", "gemma2", "google-gemma-4-31B-it.jinja", "Gemma (SentencePiece-style BPE, 262k)"),
]


def vectors(name: str) -> list[tuple[str, list[int]]]:
    """(text, llama.cpp's token ids) pairs from ggml-vocab-<name>.gguf.inp/.out, split as test-tokenizer-0 does."""
    models = artifacts.models_dir()
    raw = (models / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    outs = (models / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    texts = raw.split("\n__ggml_vocab_test__\n")
    if texts and texts[-1].endswith("\n__ggml_vocab_test__"):
        texts[-1] = texts[-1][: -len("\n__ggml_vocab_test__")]
    texts = texts[: len(outs)]
    return [(text, [int(t) for t in out.split()]) for text, out in zip(texts, outs)]


def tiny_config(arch: str, tokenizer, vocab_size: int):
    from transformers import Gemma2Config, LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, **common)
    if arch == "phi3":
        return Phi3Config(**common)
    if arch == "gemma2":
        # llama.cpp scales Gemma-2 queries by 1/sqrt(head_dim) except for the 27B model: say so in the config
        return Gemma2Config(head_dim=16, query_pre_attn_scalar=16, sliding_window=512, **common)
    raise ValueError(arch)


def build_vocab_model(vocab: Vocab, out: Path) -> Path:
    """A tiny random model of `vocab.arch` with the real tokenizer and chat template, saved like a merged model."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = artifacts.vocab_tokenizer(vocab.name)
    if vocab.template:
        tokenizer.chat_template = (artifacts.models_dir() / "templates" / vocab.template).read_text()
    config = tiny_config(vocab.arch, tokenizer, len(tokenizer))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
