"""Per-example attention for packed rows on PyTorch's SDPA (CPU, and CUDA without flash-attn).

A padding-free SFT micro-batch is one row of several examples, and a padding-free DPO batch a few rows of several
sequences, with position ids that restart at 0 for each. Under `sdpa`, transformers turns those position ids into a
dense (L x L) block-diagonal mask, and SDPA with a mask pays for the whole row: attention costs (sum of lengths)^2
although only sum(length^2) of it is allowed, and the masked kernel is slower per pair than the causal one. Here the
attention runs causal SDPA on each sequence's part of the row instead (what flash-attention's varlen kernel does on a
GPU), so the cost is per sequence and no mask is built.

Registered through transformers' public `AttentionInterface` and `AttentionMaskInterface` under `NAME`. Everything
that is not a packed row (padded batches with an attention mask, generation with a cache, a single sequence) goes to
transformers' own `sdpa` functions unchanged, so a model switched to it computes what it computed before. The switch
is only made after the packing probes pass with it (lorakit.train.speed, lorakit.train.packed_pairs), for models
whose every layer is full causal attention (no sliding windows, no extra mask overlays).

Sequence boundaries come from TRL's padding-free collator (`cu_seq_lens_q`, one row) or, for any number of rows,
from where the position ids restart. The row is cut with `split`, not slices: the backward of a split is one `cat`,
while each slice's backward fills a zero tensor the size of the whole row.
"""

from __future__ import annotations

from lorakit.compat import attention_implementation
from lorakit.console import warn

NAME = "lorakit_sdpa_varlen"
LABEL = "per-example SDPA"
# attention implementations whose own kernels read packed sequences from the position ids (flash-attention's varlen)
VARLEN_KERNELS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "kernels-community/flash-attn",
                  "kernels-community/vllm-flash-attn3")


def packed_segments(position_ids, cu_seq_lens_q, batch: int, length: int) -> list[list[int]] | None:
    """The lengths of the sequences packed in each row, or None when no row holds more than one sequence."""
    import torch

    if cu_seq_lens_q is not None and batch == 1:
        bounds = cu_seq_lens_q.tolist()
        if bounds[0] == 0 and bounds[-1] == length:
            lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:]) if end > start]
            return [lengths] if len(lengths) > 1 else None
    if position_ids is None:
        return None
    if position_ids.shape[0] != batch:
        position_ids = position_ids.expand(batch, -1)
    # a sequence starts wherever the position does not follow the previous one (transformers' own packing rule,
    # masking_utils.find_packed_sequence_indices)
    starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
    if not bool(starts[:, 1:].any()):
        return None
    starts[:, 0] = True
    rows, columns = starts.nonzero(as_tuple=True)
    cuts: list[list[int]] = [[] for _ in range(batch)]
    for row, column in zip(rows.tolist(), columns.tolist()):
        cuts[row].append(column)
    return [[end - start for start, end in zip(row, row[1:] + [length])] for row in cuts]


def per_example_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers' attention-function signature: query/key/value are (batch, heads, length, head_dim); returns
    (batch, length, heads, head_dim) and no attention weights."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    batch, _, length, _ = query.shape
    segments = None
    if attention_mask is None and key.shape[2] == length and length > 1:
        segments = packed_segments(kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"), batch, length)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None \
            or kwargs.get("sliding_window") is not None:
        raise ValueError(f"{NAME} runs plain causal attention per sequence: it has no softcap, position bias or "
                         "sliding window (use sdpa for this model)")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    groups = getattr(module, "num_key_value_groups", 1)
    gqa = groups > 1 and key.shape[-1] == value.shape[-1] <= 256
    if groups > 1 and not gqa:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows = []
    for q_row, k_row, v_row, lengths in zip(query.split(1), key.split(1), value.split(1), segments):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=causal,
                                           enable_gqa=gqa)
            for q, k, v in zip(q_row.split(lengths, dim=2), k_row.split(lengths, dim=2), v_row.split(lengths, dim=2))
        ], dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows)
    return out.transpose(1, 2).contiguous(), None


def per_example_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
                     attention_mask=None, **kwargs):
    """No mask where the attention keeps examples apart itself (no padding mask, no cache offset: a training row,
    packed or not); transformers' SDPA mask everywhere else."""
    from transformers.masking_utils import sdpa_mask

    plain_offsets = isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == 0 and kv_offset == 0
    if attention_mask is None and plain_offsets and q_length == kv_length:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, per_example_sdpa)
    AttentionMaskInterface.register(NAME, per_example_mask)
    return NAME


def eligibility(config) -> str | None:
    """Why a model cannot use per-example attention (None: it can). Only models on transformers' `sdpa` whose every
    layer is full causal attention: per-example SDPA knows no sliding window, chunking or mask overlay."""
    current = attention_implementation(config)
    if current != "sdpa":
        return f"{current} attention"
    if not getattr(config, "is_causal", True):
        return "bidirectional attention"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(kind != "full_attention" for kind in layer_types):
        return "sliding-window or chunked layers"
    if not layer_types and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    for name in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(config, name, None):
            return name.replace("_", " ")
    return None


def switch_attention(model, implementation: str) -> bool:
    """Set the attention implementation of a loaded model (or the model under a PeftModel); True when it took."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(implementation)
    return attention_implementation(base.config) == implementation


def try_per_example(model, setting: str, probe, compiled: bool = False) -> tuple[bool, str]:
    """Switch a model whose packed rows are already exact on `sdpa` to per-example attention when the recipe leaves
    the attention to lorakit, and keep it only if `probe()` (the packing probes, rerun) still passes with it.
    Returns whether it is in use and why (for the manifest)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = attention_implementation(base.config)
    if setting != "auto":
        return False, f"{current} (model.attn_implementation: {setting} in the recipe)"
    if current in VARLEN_KERNELS:
        return False, f"{current}: its variable-length kernel keeps packed sequences apart per sequence"
    why_not = eligibility(base.config)
    if why_not is not None:
        return False, f"{current}, block-diagonal mask over packed rows ({why_not})"
    if compiled:
        return False, ("sdpa, block-diagonal mask over packed rows (train.compile: per-example attention would "
                       "recompile for every new set of lengths)")
    register()
    if not switch_attention(base, NAME):
        return False, f"{current}, block-diagonal mask over packed rows (the model cannot switch its attention)"
    try:
        exact = probe()
    except Exception as exc:  # a probe that crashes is a probe that failed; say why, it may be a bug
        warn(f"per-example attention probe failed ({type(exc).__name__}: {exc}); keeping {current}")
        exact = False
    if exact:
        return True, f"{LABEL} on packed rows, {current} elsewhere (probe: packed == unpacked)"
    switch_attention(base, current)
    warn(f"per-example attention changed this model's packed logits; keeping {current} with a block-diagonal mask")
    return False, f"{current}, block-diagonal mask over packed rows (probe: per-example attention differed)"
