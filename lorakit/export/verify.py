"""Prove an export matches the model it came from: tensors, logits, tokenization (and llama.cpp when installed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lorakit.export.gguf_export import convert_tensor
from lorakit.export.logit_gap import compare_logits

# mean KL(source || export) per token above which an export is refused. Measured on a trained tiny model (hidden
# 128, the most quantization-sensitive kind) and kept ~3x above it. A small real model is not far below: SmolLM2-135M
# (fine-tuned from its Q4_1 GGUF) exported to q8_0 measured 2.1e-3 on its chats, its bf16 merge 7.5e-3, so q8_0
# gets bf16's bound (a broken export - a wrong permutation or vocabulary - is above 0.1).
KL_TOLERANCE = {"f16": 1e-3, "bf16": 5e-3, "q8_0": 5e-3, "q5_0": 0.08, "q5_1": 0.08, "q4_0": 0.3, "q4_1": 0.3,
                "q6_k": 0.03, "q5_k_m": 0.08, "q4_k_m": 0.3, "bnb-8bit": 5e-3, "bnb-4bit": 0.5}


def tensor_errors(result) -> dict[str, Any]:
    """Dequantize every tensor of the written file and compare with the source: relative RMS error."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    reader = gguf.GGUFReader(result.path)
    worst, worst_name, by_type = 0.0, "", {}
    for tensor in reader.tensors:
        file, key = result.sources[tensor.name]
        with safe_open(file, framework="pt") as handle:
            source = convert_tensor(key, handle.get_tensor(key).float().numpy(), result.config)
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(source.shape)
        error = float(np.sqrt(np.mean((data - source) ** 2)) / (np.sqrt(np.mean(source**2)) + 1e-12))
        kind = tensor.tensor_type.name
        by_type[kind] = max(by_type.get(kind, 0.0), error)
        if error > worst:
            worst, worst_name = error, tensor.name
    return {"tensors": len(reader.tensors), "max_rel_rms_error": worst, "worst_tensor": worst_name,
            "max_rel_rms_error_by_type": by_type}


def perplexity(logits: list[Any], samples: list[list[int]]) -> float:
    import torch

    nll, count = 0.0, 0
    for out, ids in zip(logits, samples):
        targets = torch.tensor(ids[1:])
        nll += torch.nn.functional.cross_entropy(out[:-1], targets, reduction="sum").item()
        count += len(ids) - 1
    return math.exp(nll / max(count, 1))


def compare_models(source_logits: list[Any], export_logits: list[Any], samples: list[list[int]]) -> dict[str, Any]:
    figures = compare_logits(source_logits, export_logits)
    source_ppl, export_ppl = perplexity(source_logits, samples), perplexity(export_logits, samples)
    figures.update(source_perplexity=source_ppl, export_perplexity=export_ppl,
                   perplexity_delta=export_ppl - source_ppl)
    return figures


def tokenization_matches(source_tokenizer, export_tokenizer, texts: list[str]) -> dict[str, Any]:
    mismatches = 0
    first = None
    for text in texts:
        a = source_tokenizer(text, add_special_tokens=False)["input_ids"]
        b = export_tokenizer(text, add_special_tokens=False)["input_ids"]
        if a != b:
            mismatches += 1
            first = first or text[:60]
    return {"texts": len(texts), "mismatches": mismatches, "first_mismatch": first}


def llama_cpp_agreement(gguf_path: Path, samples: list[list[int]], reference_logits: list[Any]) -> dict[str, Any] | None:
    """Next-token predictions of llama.cpp itself against transformers' (None when llama-cpp-python is absent)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import numpy as np

    model = Llama(model_path=str(gguf_path), logits_all=True, verbose=False, n_ctx=512)
    agree = total = 0
    for ids, ref in zip(samples, reference_logits):
        model.reset()
        model.eval(ids)
        scores = np.array(model.scores[: len(ids)])
        agree += int((scores.argmax(-1) == ref.argmax(-1).numpy()).sum())
        total += len(ids)
    return {"top1_agreement": agree / max(total, 1), "positions": total}
