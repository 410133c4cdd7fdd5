"""A plain LM head behind TRL's fused-head interface, for the CPU.

TRL 1.16's SFT and DPO trainers ask the model for per-token log-probs with
`model(..., labels=..., fused_lm_head=True)`, which TRL serves with a tiled kernel that recomputes the logits in
backward so the (tokens x vocabulary) matrix never exists at once. That is the right trade on a GPU with a 128k+
vocabulary; on a CPU it costs about twice the time (bench/throughput.py). `use_plain_lm_head` answers the same call in
one pass: the backbone runs once, the LM head is applied only at positions that carry a label (completion tokens),
and the same `FusedCausalLMOutput` fields come back, so the trainers' loss and metrics code runs unchanged.
"""

from __future__ import annotations


def supports_plain_head(model) -> bool:
    """Models that scale or soft-cap their logits (Gemma-2, Cohere...) keep TRL's head, which handles those."""
    config = model.config.get_text_config()
    scaled = any(getattr(config, name, None) not in (None, 1.0)
                 for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                              "logits_scaling"))
    return not scaled


def use_plain_lm_head(model) -> bool:
    """Re-route `fused_lm_head=True` calls of a model patched by TRL's `add_fused_lm_head`. Returns False (and
    changes nothing) for models whose logits need scaling that this head does not apply."""
    import torch

    from lorakit.compat import fused_output_class

    if not supports_plain_head(model):
        return False
    FusedCausalLMOutput = fused_output_class()
    fused_forward = model.forward

    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or kwargs.get("output_router_logits"):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = model.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        mask = targets != -100
        head = model.get_output_embeddings()
        logits = head(hidden[mask]).float()  # only positions whose next token is trained
        log_softmax = logits.log_softmax(-1)
        picked = log_softmax.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            mean_logits = logits.mean(-1)
            is_top1 = logits.argmax(-1) == targets[mask]
            log_sum_sq_probs = torch.logsumexp(2 * log_softmax, dim=-1)

        def scatter(values):
            # masked_scatter keeps the graph connected even when a micro-batch has no trained token
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = scatter(picked)
        count = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp(min=1)
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count,
            log_probs=log_probs,
            entropy=scatter(entropy),
            mean_logits=scatter(mean_logits),
            is_top1=scatter(is_top1.to(logits.dtype)).bool(),
            log_sum_sq_probs=scatter(log_sum_sq_probs),
            label_mask=mask,
        )

    model.forward = forward
    return True
