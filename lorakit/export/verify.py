"""Prove an export matches the model it came from: logits, perplexity, tokenization (GGUF: lorakit.export.gguf_verify)."""

from __future__ import annotations

import math
from typing import Any

from lorakit.export.logit_gap import compare_logits

# mean KL(source || export) per token above which an export is refused. Measured on a trained tiny model (hidden
# 128, the most quantization-sensitive kind) and kept ~3x above it. A small real model is not far below: SmolLM2-135M
# (fine-tuned from its Q4_1 GGUF) exported to q8_0 measured 2.1e-3 on its chats, its bf16 merge 7.5e-3, so q8_0
# gets bf16's bound (a broken export - a wrong permutation or vocabulary - is above 0.1). Gemma 3 270M (its Q4_K_M
# release unpacked to float32) measured q8_0 at 0.021 (its f16 export at 1.6e-5, so the file is right: 8-bit rounding
# of its 262k-row tied embedding and outlier-heavy activations cost that much): q8_0's bound is 0.03, 3x below broken.
KL_TOLERANCE = {"f16": 1e-3, "bf16": 5e-3, "q8_0": 0.03, "q5_0": 0.08, "q5_1": 0.08, "q4_0": 0.3, "q4_1": 0.3,
                "q6_k": 0.03, "q5_k_m": 0.08, "q4_k_m": 0.3, "bnb-8bit": 5e-3, "bnb-4bit": 0.5}


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
