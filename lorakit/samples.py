"""A handful of real chats from a run's own data, to compare two versions of a model (merge gap, export checks).

The data file is found through the lineage: a run's recipe names it, a merged model's manifest names the run, an
export's manifest names the merged model. When the data is gone, fixed prompts stand in (and the result says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

FALLBACK = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "What is 2 plus 3?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}],
]


def find_run(folder: Path, depth: int = 4) -> Path | None:
    """The training run at the root of a folder's lineage (itself, or the run it was merged/exported from)."""
    for _ in range(depth):
        if (folder / "lorakit.yaml").is_file():
            return folder
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            return None
        source = json.loads(manifest.read_text()).get("source")
        if not source:
            return None
        folder = Path(source)
    return None


def run_conversations(run_folder: Path, count: int) -> list[list[dict[str, str]]]:
    """Up to `count` conversations from the run's training data (SFT rows, or DPO prompt + chosen)."""
    from lorakit.config import DataSection
    from lorakit.data.load import load_rows

    recipe = yaml.safe_load((run_folder / "lorakit.yaml").read_text()) or {}
    data = DataSection(**{k: v for k, v in recipe.get("data", {}).items() if k in DataSection.model_fields})
    if not data.train:
        return []
    loaded = load_rows(data.train, data.subset, data.split, max_rows=count)
    if recipe.get("stage") == "dpo":
        from lorakit.data.preference import load_preference_examples

        rows, _ = load_preference_examples(loaded, data.format, data.columns, data.system_prompt)
        return [list(r["prompt"]) + list(r["chosen"]) for r in rows]
    from lorakit.data.formats import load_sft_examples

    rows, _ = load_sft_examples(loaded, data.format, data.columns, data.system_prompt)
    return [list(r["messages"]) or [{"role": "user", "content": r["prompt"] + r["completion"]}] for r in rows]


def sample_token_ids(folder: Path, tokenizer, count: int = 8, max_tokens: int = 256) -> tuple[list[list[int]], str]:
    """Token ids of up to `count` chats from the data behind `folder`, and where they came from."""
    run = find_run(folder)
    conversations: list[list[dict[str, str]]] = []
    origin = "fixed prompts (the run's data was not found)"
    if run is not None:
        try:
            conversations = run_conversations(run, count)
            origin = f"{len(conversations)} chats from the data of {run}"
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
    return {"max_abs_logit_diff": max_delta, "mean_kl": kl_sum / max(positions, 1),
            "top1_agreement": agree / max(positions, 1), "positions": positions}
