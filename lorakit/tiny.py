"""The bundled default model: a tiny decoder built locally and deterministically, never downloaded.

`builtin:tiny-llama` in a recipe resolves to a folder built here on first use (cached under LORAKIT_CACHE). It is a
real transformers model with a byte-level BPE tokenizer trained with `tokenizers` on the bundled corpus, saved with
`save_pretrained`, so every command loads it through the same `from_pretrained` path a 7B model takes. Like most
base models it ships no chat template; lorakit gives it the default ChatML template at training time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from lorakit import __version__
from lorakit.cache import cache_dir
from lorakit.errors import ModelError
from lorakit.io import atomic_dir

BUILTIN_PREFIX = "builtin:"

# Pre-tokenizer regexes of the real model families, so exported tokenizers look like the real ones to llama.cpp.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<|begin_of_text|>"]


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model. The defaults are the bundled `builtin:tiny-llama`."""

    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 1024  # BPE merges are trained up to this size (special tokens included)
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False
    chat_template: str | None = None
    initializer_range: float = 0.02
    seed: int = 0


# The bundled models are larger than the test default and initialized with a wider spread: with the usual 0.02, a
# random model's logits are so flat that a LoRA adapter (which cannot touch lm_head or the final norm) can rank the
# right token first but never make it likely. At 0.1 the example chats are memorized in about 200 steps.
_BUNDLED = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, initializer_range=0.1)
BUILTIN_MODELS = {
    "tiny-llama": TinySpec(**_BUNDLED),
    "tiny-qwen2": TinySpec(arch="qwen2", tie_word_embeddings=True, **_BUNDLED),
}


def corpus_lines() -> list[str]:
    text = resources.files("lorakit").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer(spec: TinySpec):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pattern = LLAMA3_PATTERN if spec.arch == "llama" else QWEN2_PATTERN
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    if spec.arch == "llama":
        # Llama-3 style: a BOS token is prepended to every encoded text.
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
        bos_token = bos
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        bos_token = None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=spec.max_position_embeddings,
    )
    if spec.chat_template:
        fast.chat_template = spec.chat_template
    return fast


def build_model(spec: TinySpec, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        initializer_range=spec.initializer_range,
    )
    config = LlamaConfig(**common) if spec.arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(spec.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_tiny_model(out_dir: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Build a tiny model + tokenizer into `out_dir` (written atomically). Same spec, same bytes."""
    out = Path(out_dir)
    with atomic_dir(out, force=True, ours_only=False) as staging:
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, tokenizer)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "lorakit-tiny.json").write_text(json.dumps(asdict(spec), indent=2))
    return out


def resolve_builtin(name: str) -> Path:
    """`builtin:tiny-llama` -> the folder of that model, built on first use."""
    key = name[len(BUILTIN_PREFIX):]
    if key not in BUILTIN_MODELS:
        raise ModelError(
            f"unknown built-in model {name!r}",
            hint="built-in models: " + ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS),
        )
    spec = BUILTIN_MODELS[key]
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:8]
    folder = cache_dir() / "models" / f"{key}-{__version__}-{digest}"
    if not (folder / "config.json").exists():
        build_tiny_model(folder, spec)
    return folder
