"""How far apart two versions of a model are: their logits compared on a handful of chats from the run's own data.

Merge (trained vs merged) and quantize (source vs export) both measure their gap here. The data file is found
through the lineage: a run's recipe names it, a merged model's manifest names the run, an export's manifest names
the merged model. When the data is gone, fixed prompts stand in (and the result says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.data.formats import load_sft_examples
from lorakit.data.load import load_rows
from lorakit.data.preference import load_preference_examples
from lorakit.outputs import Run, training_run_behind

FALLBACK = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "What is 2 plus 3?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}],
]


def run_conversations(run: Run, count: int) -> list[list[dict[str, str]]]:
    """Up to `count` conversations from the run's training data (SFT rows, or DPO prompt + chosen)."""
    data = run.recipe.data
    if not data.train:
        return []
    loaded = load_rows(data.train, data.subset, data.split, max_rows=count)
    if run.stage == "dpo":
        rows, _ = load_preference_examples(loaded, data.format, data.columns, data.system_prompt)
        return [list(r["prompt"]) + list(r["chosen"]) for r in rows]
    rows, _ = load_sft_examples(loaded, data.format, data.columns, data.system_prompt)
    return [list(r["messages"]) or [{"role": "user", "content": r["prompt"] + r["completion"]}] for r in rows]


def sample_token_ids(folder: Path, tokenizer, count: int = 8, max_tokens: int = 256) -> tuple[list[list[int]], str]:
    """Token ids of up to `count` chats from the data behind `folder`, and where they came from."""
    run = training_run_behind(folder)
    conversations: list[list[dict[str, str]]] = []
    origin = "fixed prompts (the run's data was not found)"
    if run is not None:
        try:
            conversations = run_conversations(run, count)
            origin = f"{len(conversations)} chats from the data of {run.path}"
        except Exception:  # the data moved or changed shape since training: fall back, and say so
            conversations = []
    if not conversations:
        conversations = FALLBACK[:count]
    samples = []
    for messages in conversations:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        else:  # a base model without a template: the turns as plain text
            text = "\n\n".join(m["content"] for m in messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if len(ids) > 1:
            samples.append(ids)
    return samples, origin


def logits_for(model, samples: list[list[int]]) -> list[Any]:
    """Float32 logits for each sample, computed one by one (no padding effects)."""
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for ids in samples:
            outputs.append(model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float().cpu())
    return outputs


def compare_logits(reference: list[Any], candidate: list[Any]) -> dict[str, float]:
    """max |Δlogit|, mean KL(reference || candidate) per token, top-1 agreement over all positions."""
    max_delta, kl_sum, agree, positions = 0.0, 0.0, 0, 0
    for ref, cand in zip(reference, candidate):
        max_delta = max(max_delta, (ref - cand).abs().max().item())
        ref_logp, cand_logp = ref.log_softmax(-1), cand.log_softmax(-1)
        kl_sum += (ref_logp.exp() * (ref_logp - cand_logp)).sum().item()
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        positions += ref.shape[0]
    # KL is >= 0; float32 rounding of two near-equal distributions can give -1e-8, which reads as nonsense
    return {"max_abs_logit_diff": max_delta, "mean_kl": max(kl_sum / max(positions, 1), 0.0),
            "top1_agreement": agree / max(positions, 1), "positions": positions}
