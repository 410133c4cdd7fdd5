"""Preference scores for `lorakit eval`: DPO's implicit reward of a policy against its reference.

reward = beta * (log pi(y|x) - log ref(y|x)); a pair is ranked right when chosen's reward beats rejected's. The
reference of a candidate is its parent (dpo -> its SFT run -> base): the parent's log-probs when the parent was
scored in the same eval, else the base under the candidate's adapter switched off.
"""

from __future__ import annotations

from typing import Any

DEFAULT_BETA = 0.1


def sequence_logps(model, pairs) -> tuple[list[float], list[float]]:
    """Summed log-probs of chosen and rejected responses given their prompt, pair by pair (no padding)."""
    import torch

    device = next(model.parameters()).device
    chosen, rejected = [], []
    with torch.no_grad():
        for row in pairs:
            for response, into in ((row["chosen_ids"], chosen), (row["rejected_ids"], rejected)):
                ids = row["prompt_ids"] + response
                logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float()
                logp = logits[:-1].log_softmax(-1)
                targets = torch.tensor(ids[1:], device=device)
                picked = logp.gather(-1, targets[:, None])[:, 0]
                into.append(picked[len(row["prompt_ids"]) - 1:].sum().item())
    return chosen, rejected


def _beta(candidate) -> float:
    if candidate.run is not None:
        return float((candidate.run.recipe.get("dpo") or {}).get("beta", DEFAULT_BETA))
    return DEFAULT_BETA


def preference_scores(candidate, model, tokenizer, prefs: str, candidates, location) -> dict[str, Any]:
    from lorakit.config import DataSection
    from lorakit.data.preference import tokenize_preferences

    max_length = 1024
    if candidate.run is not None:
        max_length = int((candidate.run.recipe.get("data") or {}).get("max_length", max_length))
    section = DataSection(train=prefs, max_length=max_length)
    pairs, _, _, _ = tokenize_preferences(prefs, section, 512, tokenizer)
    pairs = list(pairs)
    chosen, rejected = sequence_logps(model, pairs)
    candidate.logps = (chosen, rejected)

    parent = next((c for c in candidates if c.name == candidate.parent and hasattr(c, "logps")), None)
    reference_name = parent.name if parent is not None else None
    if parent is not None:
        ref_chosen, ref_rejected = parent.logps
    elif hasattr(model, "disable_adapter") and candidate.kind in ("sft", "dpo"):
        with model.disable_adapter():
            ref_chosen, ref_rejected = sequence_logps(model, pairs)
        reference_name = "base (adapter off)"
    else:
        ref_chosen, ref_rejected = chosen, rejected  # no reference: rewards are zero by definition
        reference_name = "itself"
    beta = _beta(candidate)
    margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    n = max(len(margins), 1)
    return {
        "reward_accuracy": sum(m > 0 for m in margins) / n,
        "reward_margin": sum(margins) / n,
        "logp_gap": sum(c - r for c, r in zip(chosen, rejected)) / n,
        "pairs": len(margins),
        "reference": reference_name,
    }
