"""Write a merged transformers model as GGUF with llama.cpp's own Python package (`gguf`), no compiler needed.

Conventions follow llama.cpp's converter: tensor names from gguf's name map, 1-D tensors in F32, llama-arch q/k
weights permuted back to llama.cpp's rotary layout (Qwen2/3 keep HF's), Gemma norms stored as 1 + w, tied
embeddings without an output tensor, added special tokens typed CONTROL (or llama.cpp splits <|im_start|> into
text), the BPE pre-tokenizer named, the chat template and the end-of-turn id in the metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lorakit.errors import ModelError, ResourceError

PYTHON_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
K_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3", "gemma2": "GEMMA2",
         "phi3": "PHI3"}
PERMUTED = {"llama", "mistral"}  # llama.cpp applies rotary in GPT-J layout for these; HF stores NeoX halves
# Regexes of the byte-level BPE pre-tokenizers llama.cpp knows, as they appear in tokenizer.json
PRE_TOKENIZERS = [
    ("llama-bpe", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"),
    ("qwen2", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"),
]


@dataclass
class GGUFResult:
    path: Path
    type: str
    tensors: int
    bytes: int
    fallbacks: list[str]
    sources: dict[str, tuple[Path, str]]  # GGUF tensor name -> (safetensors file, HF name)
    config: dict[str, Any]


def check_type(qtype: str) -> None:
    if qtype in PYTHON_TYPES:
        return
    if qtype in K_TYPES:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ResourceError(f"GGUF type {qtype} needs llama.cpp's quantizer, from the optional extra "
                                "lorakit[llama-cpp] (llama-cpp-python)",
                                hint=f"pip install 'lorakit[llama-cpp]', or use one of {', '.join(PYTHON_TYPES)}")
        return
    raise ResourceError(f"unknown GGUF type {qtype!r}", hint=f"one of {', '.join(PYTHON_TYPES + K_TYPES)}")


def _ggml_type(qtype: str):
    import gguf

    return {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
            "q4_1": gguf.GGMLQuantizationType.Q4_1, "q5_0": gguf.GGMLQuantizationType.Q5_0,
            "q5_1": gguf.GGMLQuantizationType.Q5_1}[qtype]


def _file_type(qtype: str):
    import gguf

    return {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
            "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1, "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
            "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1}[qtype]


def permute(weight, heads: int):
    """HF's rotary halves -> llama.cpp's interleaved pairs, per head (the inverse of transformers' GGUF loader)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def read_config(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in ARCHS:
        raise ModelError(f"{folder}: architecture {model_type!r} has no GGUF mapping in lorakit",
                         hint=f"supported: {', '.join(sorted(ARCHS))}")
    if config.get("quantization_config"):
        raise ModelError(f"{folder}: the model is quantized; GGUF export needs merged 16/32-bit weights",
                         hint="quantize the output of `lorakit merge` (or give the run folder)")
    return config


def pre_tokenizer_name(tokenizer_json: dict[str, Any], model_type: str) -> str:
    text = json.dumps(tokenizer_json.get("pre_tokenizer") or {})
    for name, pattern in PRE_TOKENIZERS:
        if json.dumps(pattern)[1:-1] in text:
            return name
    if model_type in ("qwen2", "qwen3"):
        return "qwen2"
    if '"ByteLevel"' in text and '"Split"' not in text:
        return "gpt-2"
    raise ModelError("the tokenizer's pre-tokenizer is not one llama.cpp knows by name (llama-bpe, qwen2, gpt-2)",
                     hint="export a model whose tokenizer is one of those, or use --format bnb-4bit")


def add_vocab(writer, folder: Path, config: dict[str, Any], tokenizer) -> None:
    import gguf

    from lorakit.chat_template import end_of_turn_token

    vocab_size = config["vocab_size"]
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    model = tokenizer_json.get("model", {})
    spm = model.get("type") == "BPE" and model.get("byte_fallback")
    if spm:
        vocab = gguf.LlamaHfVocab(folder)
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    else:
        if model.get("type") != "BPE":
            raise ModelError(f"{folder}/tokenizer.json: {model.get('type')} tokenizers have no GGUF mapping here",
                             hint="byte-level BPE and SentencePiece-style BPE are supported")
        special = {t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
        added = {t["id"] for t in tokenizer_json.get("added_tokens", [])}
        id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
        tokens, types, scores = [], [], None
        for i in range(vocab_size):
            if i not in id_to_token:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
            else:
                tokens.append(id_to_token[i])
                types.append(gguf.TokenType.CONTROL if i in special else
                             gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json, config["model_type"]))
    # llama.cpp needs exactly vocab_size entries
    while len(tokens) < vocab_size:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(gguf.TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    writer.add_token_list(tokens[:vocab_size])
    writer.add_token_types(types[:vocab_size])
    if scores is not None:
        writer.add_token_scores(scores[:vocab_size])
    special_vocab = gguf.SpecialVocab(folder, load_merges=not spm, n_vocab=vocab_size)
    special_vocab.add_to_gguf(writer, quiet=True)
    eot = end_of_turn_token(tokenizer) if tokenizer.chat_template else None
    if eot is not None:
        writer.add_eot_token_id(eot[0])


def add_hparams(writer, config: dict[str, Any], qtype: str, name: str) -> None:
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta",
                                                                                                    10000.0))
    writer.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    if config["model_type"] == "gemma2":
        writer.add_attn_logit_softcapping(config.get("attn_logit_softcapping") or 50.0)
        writer.add_final_logit_softcapping(config.get("final_logit_softcapping") or 30.0)
        writer.add_sliding_window(config.get("sliding_window") or 4096)
    writer.add_file_type(_file_type(qtype))


def convert_tensor(name: str, data, config: dict[str, Any]):
    """HF tensor -> llama.cpp layout (numpy float32)."""
    model_type = config["model_type"]
    if model_type in PERMUTED:
        heads = config["num_attention_heads"]
        if name.endswith("q_proj.weight"):
            data = permute(data, heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, config.get("num_key_value_heads") or heads)
    if model_type == "gemma2" and name.endswith("norm.weight"):
        data = data + 1  # Gemma's RMSNorm scales by (1 + w)
    return data


def write_gguf(folder: Path, target: Path, qtype: str, tokenizer, progress: Callable[[int, int], None] | None = None
               ) -> GGUFResult:
    """Convert the safetensors in `folder` to `target` (Python-side types; K-quants go through f16 first)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = read_config(folder)
    arch = getattr(gguf.MODEL_ARCH, ARCHS[config["model_type"]])
    name_map = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    ggml_type = _ggml_type(qtype)
    writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[arch])
    add_hparams(writer, config, qtype, folder.name)
    add_vocab(writer, folder, config, tokenizer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights", hint="give a merged model folder or a run folder")
    names = []
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names += [(file, key) for key in handle.keys()]
    tied = config.get("tie_word_embeddings", False)
    fallbacks = []
    sources: dict[str, tuple[Path, str]] = {}
    total = 0
    for index, (file, key) in enumerate(names):
        if tied and key == "lm_head.weight":
            continue
        gguf_name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            if "rotary_emb" in key:
                continue
            raise ModelError(f"{folder}: tensor {key} has no GGUF name for {config['model_type']}",
                             hint="the model has layers lorakit's GGUF mapping does not know")
        with safe_open(file, framework="pt") as handle:
            data = handle.get_tensor(key).float().numpy()
        data = convert_tensor(key, data, config)
        kind = ggml_type
        if data.ndim <= 1:
            kind = gguf.GGMLQuantizationType.F32
        elif qtype not in ("f16", "bf16") and data.shape[-1] % gguf.GGML_QUANT_SIZES[ggml_type][0]:
            kind = gguf.GGMLQuantizationType.F16  # rows that do not split into blocks stay 16-bit
            fallbacks.append(gguf_name)
        packed = gguf.quants.quantize(data.astype(np.float32), kind)
        writer.add_tensor(gguf_name, packed, raw_dtype=kind)
        sources[gguf_name] = (file, key)
        total += packed.nbytes
        if progress:
            progress(index + 1, len(names))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFResult(target, qtype, len(sources), total, fallbacks, sources, config)


def k_quantize(f16_path: Path, target: Path, qtype: str) -> None:
    """K-quants through llama.cpp's own quantizer (llama-cpp-python), from an f16 GGUF."""
    import llama_cpp

    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
             "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}[qtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(target).encode(), params)
    if code != 0:
        raise ModelError(f"llama.cpp's quantizer failed on {f16_path.name} (code {code})",
                         hint="try a Python-side type such as q8_0 or q4_0")
