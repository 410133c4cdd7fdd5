"""Preference scores for `lorakit eval`: DPO's implicit reward of a policy against its reference.

reward = beta * (log pi(y|x) - log ref(y|x)); a pair is ranked right when chosen's reward beats rejected's. The
reference is the one the run trained against: a DPO run's SFT parent, an SFT run's base; a merged model or GGUF
export is scored against the reference of the run it came from. The base model has none, so it gets no rewards.
"""

from __future__ import annotations

from typing import Any

from lorakit.config import DataSection, DPOSection
from lorakit.data.preference import tokenize_preferences
from lorakit.outputs import training_run_behind


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


def preference_settings(candidate) -> tuple[float, int, int | None]:
    """beta, max_length and max_prompt_length of the run behind the candidate (the schema's defaults otherwise)."""
    run = candidate.run
    if run is None and candidate.path is not None:  # a merged model or export: the run it was made from
        run = training_run_behind(candidate.path.parent if candidate.path.is_file() else candidate.path)
    dpo = run.recipe.dpo if run is not None and run.stage == "dpo" else DPOSection()
    data = run.recipe.data if run is not None else DataSection()
    return dpo.beta, data.max_length, dpo.max_prompt_length


def preference_scores(candidate, model, tokenizer, prefs: str, candidates, location) -> dict[str, Any]:
    beta, max_length, max_prompt_length = preference_settings(candidate)
    section = DataSection(train=prefs, max_length=max_length)
    pairs, _, _, _ = tokenize_preferences(prefs, section, max_prompt_length, tokenizer)
    pairs = list(pairs)
    chosen, rejected = sequence_logps(model, pairs)
    candidate.logps = (chosen, rejected)

    n = max(len(pairs), 1)
    scores: dict[str, Any] = {"logp_gap": sum(c - r for c, r in zip(chosen, rejected)) / n, "pairs": len(pairs)}
    by_name = {c.name: c for c in candidates}
    reference = reference_of(candidate, by_name)
    if reference is not None and hasattr(reference, "logps"):
        (ref_chosen, ref_rejected), scores["reference"] = reference.logps, reference.name
    elif candidate.kind in ("sft", "dpo") and candidate.parent == "base" and hasattr(model, "disable_adapter"):
        with model.disable_adapter():  # the base was not scored (--no-base): it is this model, adapter off
            ref_chosen, ref_rejected = sequence_logps(model, pairs)
        scores["reference"] = "base (adapter off)"
    else:
        return scores  # the base, or a reference that is not part of this eval: no rewards to speak of
    margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    scores["reward_accuracy"] = sum(m > 0 for m in margins) / n
    scores["reward_margin"] = sum(margins) / n
    return scores


def reference_of(candidate, by_name):
    """The candidate a model's rewards are measured against: an adapter run's parent; for a merged model or a GGUF
    export, the reference of what it was made from."""
    parent = by_name.get(candidate.parent or "")
    if candidate.kind in ("sft", "dpo"):
        return parent
    if candidate.kind in ("merged", "gguf") and parent is not None:
        return reference_of(parent, by_name)
    return None
