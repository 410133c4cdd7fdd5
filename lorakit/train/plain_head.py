"""A plain LM head behind TRL's fused-head interface, for the CPU.

TRL 1.16's SFT and DPO trainers ask the model for per-token log-probs with
`model(..., labels=..., fused_lm_head=True)`, which TRL serves with a tiled kernel that recomputes the logits in
backward so the (tokens x vocabulary) matrix never exists at once. That is the right trade on a GPU with a 128k+
vocabulary; on a CPU it costs about twice the time (bench/throughput.py). `use_plain_lm_head` answers the same call in
one pass: the backbone runs once, the LM head is applied only at positions that carry a label (completion tokens),
and the same `FusedCausalLMOutput` fields come back, so the trainers' loss and metrics code runs unchanged.

When the head is frozen (LoRA never trains it unless it is in `modules_to_save`), the log-probs go through
`head_log_probs`: tokens in chunks, and for each chunk the gradient of its log-probs with respect to the hidden states,
(onehot - softmax) @ W, computed right away from the softmax the metrics need anyway. Backward then only scales those
rows by the incoming gradient. Same arithmetic as autograd through the full logits (one head matmul forward, one
back), but the logits exist a chunk at a time and nothing of vocabulary size is kept for backward: less peak memory,
and no separate log-softmax backward pass over (tokens x vocabulary).
"""

from __future__ import annotations

from lorakit.compat import fused_output_class

CHUNK_ELEMENTS = 1 << 23  # logits per chunk (32 MB in fp32): about 256 tokens at a 32k vocabulary, 64 at 128k


def supports_plain_head(model) -> bool:
    """Models that scale or soft-cap their logits (Gemma-2, Cohere...) keep TRL's head, which handles those."""
    config = model.config.get_text_config()
    scaled = any(getattr(config, name, None) not in (None, 1.0)
                 for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                              "logits_scaling"))
    return not scaled


def frozen_linear(head) -> bool:
    """A plain nn.Linear whose parameters are not trained: its gradient is only the one of its input."""
    import torch

    return type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())


def _head_log_probs_function():
    import torch

    class HeadLogProbs(torch.autograd.Function):
        """(log p(target), entropy, mean logit, top-1 hit, logsumexp(2 log p)) per row of `hidden` under a frozen
        linear head, in chunks of rows; only the first output has a gradient."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, want_sq_probs: bool):
            rows = hidden.shape[0]
            chunk = max(16, CHUNK_ELEMENTS // weight.shape[0])
            keep_grad = ctx.needs_input_grad[0]
            out = [hidden.new_empty(rows, dtype=torch.float32) for _ in range(4)]
            picked, entropy, mean_logits, log_sum_sq = out
            is_top1 = torch.empty(rows, dtype=torch.bool, device=hidden.device)
            grad_rows = torch.empty_like(hidden) if keep_grad else None
            for start in range(0, rows, chunk):
                end = min(start + chunk, rows)
                h, t = hidden[start:end], targets[start:end, None]
                logits = torch.nn.functional.linear(h, weight, bias).float()
                mean_logits[start:end] = logits.mean(-1)
                is_top1[start:end] = logits.argmax(-1) == t[:, 0]
                log_probs = logits.log_softmax(-1)
                del logits
                picked[start:end] = log_probs.gather(-1, t)[:, 0]
                if want_sq_probs:
                    log_sum_sq[start:end] = torch.logsumexp(2 * log_probs, dim=-1)
                probs = log_probs.exp()
                entropy[start:end] = -(probs * log_probs).sum(-1)
                del log_probs
                if keep_grad:  # d log p(t) / d h = (onehot(t) - softmax) @ W
                    probs.scatter_add_(-1, t, probs.new_full(t.shape, -1.0))
                    grad_rows[start:end] = -(probs.to(weight.dtype) @ weight).to(hidden.dtype)
                del probs
            if not want_sq_probs:
                log_sum_sq.zero_()
            ctx.save_for_backward(grad_rows if keep_grad else hidden.new_empty(0))
            ctx.mark_non_differentiable(entropy, mean_logits, is_top1, log_sum_sq)
            return picked, entropy, mean_logits, is_top1, log_sum_sq

        @staticmethod
        def backward(ctx, grad_picked, *unused):
            (grad_rows,) = ctx.saved_tensors
            if grad_picked is None or grad_rows.numel() == 0:
                return None, None, None, None, None
            return (grad_picked.to(grad_rows.dtype)[:, None] * grad_rows, None, None, None, None)

    return HeadLogProbs


_FUNCTION = None


def head_log_probs(hidden, head, targets, want_sq_probs: bool = False):
    """Per-row log-probs of `targets` and the metrics TRL logs, for a frozen nn.Linear head (see the module doc)."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _head_log_probs_function()
    return _FUNCTION.apply(hidden, head.weight, head.bias, targets, want_sq_probs)


def full_logits_log_probs(hidden, head, targets, want_sq_probs: bool = False):
    """The same outputs through autograd over the whole (rows x vocabulary) logits: for heads that train."""
    import torch

    logits = head(hidden).float()
    log_softmax = logits.log_softmax(-1)
    picked = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        mean_logits = logits.mean(-1)
        is_top1 = logits.argmax(-1) == targets
        log_sum_sq = torch.logsumexp(2 * log_softmax, dim=-1) if want_sq_probs else torch.zeros_like(mean_logits)
    return picked, entropy, mean_logits, is_top1, log_sum_sq


def use_plain_lm_head(model, want_sq_probs: bool = False) -> bool:
    """Re-route `fused_lm_head=True` calls of a model patched by TRL's `add_fused_lm_head`. Returns False (and
    changes nothing) for models whose logits need scaling that this head does not apply. `want_sq_probs`: the
    trainer reads `log_sum_sq_probs` (DPO's WPO weighting); otherwise that field is zeros."""
    if not supports_plain_head(model):
        return False
    if getattr(model.forward, "lorakit_plain_head", False):
        return True  # already in place (DPO swaps it before TRL's reference precompute)
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
        score = head_log_probs if frozen_linear(head) else full_logits_log_probs
        # only positions whose next token is trained
        picked, entropy, mean_logits, is_top1, log_sum_sq = score(hidden[mask], head, targets[mask], want_sq_probs)

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
            is_top1=scatter(is_top1.to(entropy.dtype)).bool(),
            log_sum_sq_probs=scatter(log_sum_sq),
            label_mask=mask,
        )

    forward.lorakit_plain_head = True
    model.forward = forward
    return True
