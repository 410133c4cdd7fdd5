"""An experiment for issue 20: per-example ("varlen") attention for padding-free rows on SDPA, without flash-attn.

lorakit's padding-free SFT puts a whole micro-batch in one row; on `sdpa`, transformers turns the per-example position
ids into a dense (L x L) block-diagonal mask, so attention costs (sum of lengths)^2 for a micro-batch although only
sum(length^2) of it is allowed. This attention function instead runs causal SDPA on each example's slice of the row,
using the sequence boundaries TRL's padding-free collator already sends (`cu_seq_lens_q`), and a mask function that
builds no mask at all. Registered under the name "sdpa_varlen"; bench/throughput.py's `lorakit-varlen` side switches
lorakit's model to it after lorakit built its trainer, to measure what adopting it would gain. Not part of lorakit.
"""

from __future__ import annotations

NAME = "sdpa_varlen"


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        cu_seq_lens_q=None, **kwargs):
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        # The mask function builds no mask, so without boundaries a packed row would attend across examples.
        if module.training or query.shape[2] > 1:
            raise ValueError("sdpa_varlen needs cu_seq_lens_q (padding-free rows from TRL's collator)")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    bounds = cu_seq_lens_q.tolist()
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    # split, not slicing: the backward of a split is one cat, while each slice's backward fills a zero tensor the
    # size of the whole row (measured: fill_/add_ then cost as much as the attention saved)
    outputs = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout if module.training else 0.0, scale=scaling,
                                       is_causal=True, enable_gqa=groups > 1)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def no_mask(*args, **kwargs):
    """The mask function for "sdpa_varlen": the attention builds causality per example itself."""
    return None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, no_mask)
    return NAME


def use_varlen(model) -> None:
    """Switch a loaded model (or PeftModel) to the varlen attention."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
