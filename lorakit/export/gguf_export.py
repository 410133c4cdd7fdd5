"""Write a merged transformers model as GGUF with llama.cpp's own Python package (`gguf`), no compiler needed.

Conventions follow llama.cpp's converter: tensor names from gguf's name map, 1-D tensors in F32, llama-arch q/k
weights permuted back to llama.cpp's rotary layout (Qwen2/3 keep HF's), Gemma norms stored as 1 + w, tied
embeddings without an output tensor. The tokenizer part (lorakit/export/gguf_vocab.py) types added special tokens
CONTROL (or llama.cpp splits <|im_start|> into text), names the BPE pre-tokenizer, gives SentencePiece vocabularies
their scores, and writes the chat template, the end-of-turn id and the BOS flag training used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorakit.config import GGUF_K_TYPES as K_TYPES
from lorakit.config import GGUF_TYPES as PYTHON_TYPES
from lorakit.errors import ModelError, ResourceError
from lorakit.export.gguf_vocab import add_vocab, llama_cpp_name

ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3", "gemma2": "GEMMA2",
         "phi3": "PHI3"}
PERMUTED = {"llama", "mistral"}  # llama.cpp applies rotary in GPT-J layout for these; HF stores NeoX halves
@dataclass
class GGUFResult:
    path: Path
    type: str
    tensors: int
    bytes: int
    fallbacks: list[str]
    sources: dict[str, tuple[Path, str]]  # GGUF tensor name -> (safetensors file, HF name)
    config: dict[str, Any]
    vocab: dict[str, Any] = field(default_factory=dict)  # what the tokenizer part says (gguf_vocab.add_vocab)


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


def add_hparams(writer, config: dict[str, Any], qtype: str, name: str, parameters: int) -> None:
    import gguf

    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_size_label(gguf.size_label(parameters, 0, 0, 0))
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
    writer.add_key_length(head_dim)  # llama.cpp derives it from hidden/heads when absent; written as its converter does
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
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no .safetensors weights", hint="give a merged model folder or a run folder")
    tied = config.get("tie_word_embeddings", False)
    names, parameters = [], 0
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                if (tied and key == "lm_head.weight") or "rotary_emb" in key:
                    continue  # tied: llama.cpp reuses token_embd; rotary tables are recomputed
                names.append((file, key))
                parameters += int(np.prod(handle.get_slice(key).get_shape()))
    writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[arch])
    name = llama_cpp_name(folder.name, json.loads((folder / "tokenizer.json").read_text()))
    add_hparams(writer, config, qtype, name, parameters)
    vocab = add_vocab(writer, folder, config, tokenizer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    fallbacks = []
    sources: dict[str, tuple[Path, str]] = {}
    total = 0
    for index, (file, key) in enumerate(names):
        gguf_name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
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
    return GGUFResult(target, qtype, len(sources), total, fallbacks, sources, config, vocab)


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
