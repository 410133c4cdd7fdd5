"""Padding-free DPO: every sequence of a batch packed into rows without padding, scored as if it were padded.

TRL 1.16 turns `padding_free` off for DPO, so a batch of pairs is padded to its longest prompt + completion, and
with chat data of uneven length most of the compute goes to padding. Here the collator still returns TRL's padded
layout (so TRL's loss, reference log-probs and logged metrics run unchanged, whatever the loss type), plus a
`packed_index` that places every real token of that layout into a few packed rows, and `packed_position_ids` that
restart at 0 for each sequence. A wrapper on the model's backbone (the decoder stack under the LM head) runs the
packed rows instead of the padded batch and scatters the hidden states back into the padded layout, zeros at the
padding. The LM head (TRL's fused one, or lorakit's plain one on the CPU) then scores exactly the positions it would
have scored, so the per-sequence log-probs of the policy and of the reference are the padded ones to float rounding.

Whether packed sequences stay apart depends on the attention implementation: transformers builds a block-diagonal
mask from the position ids for SDPA and eager attention (`find_packed_sequence_indices`, transformers 5), and
flash-attention turns them into variable-length sequences, but only for a single row. lorakit's per-example SDPA
(lorakit.train.attention) cuts every row at the position resets and runs each sequence alone. So flash attention and
per-example SDPA get one row per batch (their cost is per sequence: nothing to gain from narrower rows, and one row
has no filler slots); transformers' masked SDPA and eager, whose attention costs rows x row-length^2 whatever the
mask, get rows about as long as the batch's longest sequence. The packed path is only enabled after two probes on the
loaded model: the one SFT uses (`speed.packing_is_exact`), and the same comparison through this module's own layout
(several rows, filler tokens); per-example attention is then only kept if both probes pass again with it, in both
layouts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from lorakit.compat import attention_implementation, preference_collator_class
from lorakit.console import warn
from lorakit.train.attention import try_per_example
from lorakit.train.distributed import on_main
from lorakit.train.speed import packing_is_exact

# attention implementations that read packed sequences from the position ids of a single row (varlen kernels):
# their cost is per sequence, so one long row is best, and only one row is supported
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                   "kernels-community/vllm-flash-attn3")


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequences into rows of at most `capacity` tokens, longest first, each into the first row it fits.
    Deterministic (ties keep their order), so the same batch always gives the same rows."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, left in enumerate(room):
            if lengths[i] <= left:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack_rows(lengths: list[int], one_row: bool, attention_weight: float = 0.0) -> list[list[int]]:
    """Which sequences share a row.

    Varlen attention (`one_row`): all of them, in one row. Masked attention: a row of width W costs about
    W x (1 + attention_weight x W) token-layers (linear layers per token, plus attention over the whole row, which
    a block-diagonal mask does not make cheaper); the width is chosen among multiples of the longest sequence
    (and the all-in-one row) to make rows x W x (1 + attention_weight x W) smallest.
    """
    if one_row or not lengths:
        return [list(range(len(lengths)))]
    longest, total = max(lengths), sum(lengths)
    best, best_cost = None, float("inf")
    for capacity in sorted({min(total, int(longest * k)) for k in (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16)} | {total}):
        rows = first_fit(lengths, capacity)
        width = max(sum(lengths[i] for i in row) for row in rows)
        cost = len(rows) * width * (1 + attention_weight * width)
        if cost < best_cost:
            best, best_cost = rows, cost
    return best


def packed_layout(lengths: list[int], padded_length: int, one_row: bool, attention_weight: float = 0.0):
    """`packed_index` and `packed_position_ids` ([rows, row_length]) for sequences of `lengths` that sit
    right-padded in a (len(lengths), padded_length) batch.

    packed_index[r, j] is the flat position in the padded batch of the token packed at (r, j); filler slots at the
    end of shorter rows point one past the end (a slot the wrapper adds and then drops). Fillers get positions
    0, 1, ... of their own, so they form a sequence of their own that no real token attends to.
    """
    import torch

    rows = pack_rows(lengths, one_row, attention_weight)
    width = max(sum(lengths[i] for i in row) for row in rows)
    filler = len(lengths) * padded_length
    index = torch.full((len(rows), width), filler, dtype=torch.long)
    positions = torch.empty((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = lengths[i]
            index[r, start:start + n] = torch.arange(i * padded_length, i * padded_length + n)
            positions[r, start:start + n] = torch.arange(n)
            start += n
        positions[r, start:] = torch.arange(width - start)
    return index, positions


def attention_weight_of(config) -> float:
    """Attention FLOPs per token per unit of row width over linear-layer FLOPs per token, for one decoder layer.

    QK^T and AV cost 4 x heads x head_dim per (query, key) pair; the projections and a gated MLP 2 x their
    parameters per token. Only the ratio matters: it sets how wide packed rows should be under masked attention.
    """
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    linear = 2 * hidden * head_dim * (heads + kv_heads) + 3 * hidden * intermediate
    return 4 * heads * head_dim / (2 * linear)


def make_packed_collator(pad_token_id: int, one_row: bool, attention_weight: float = 0.0):
    """TRL's preference collator (the padded layout its loss reads) plus the packed layout of the same batch."""
    DataCollatorForPreference = preference_collator_class()

    @dataclass
    class PackedPreferenceCollator(DataCollatorForPreference):
        one_row: bool = False
        attention_weight: float = 0.0

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().torch_call(examples)
            mask = batch["attention_mask"]
            lengths = mask.sum(1).tolist()  # right-padded: the first `length` slots of each row are real
            batch["packed_index"], batch["packed_position_ids"] = packed_layout(
                lengths, mask.shape[1], self.one_row, self.attention_weight)
            return batch

    return PackedPreferenceCollator(pad_token_id=pad_token_id, one_row=one_row, attention_weight=attention_weight)


def causal_lm_of(model):
    """The transformers model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def install_packed_forward(model) -> None:
    """Let the backbone run a padded batch as packed rows when the batch carries `packed_index`.

    Batches without it (generation, evaluation of other callers, the probe's padded side) take the original path.
    The wrapper sits on the backbone, not on the causal LM's forward, because TRL's fused head and lorakit's plain
    head both call the backbone directly; it is installed once, before TRL patches the head.
    """
    import torch

    backbone = causal_lm_of(model).base_model
    if getattr(backbone.forward, "lorakit_packed", False):
        return
    original = backbone.forward

    @functools.wraps(original)
    def forward(*args, packed_index=None, packed_position_ids=None, **kwargs):
        if (packed_index is None or kwargs.get("output_attentions") or kwargs.get("output_router_logits")
                or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None):
            # attention maps, MoE router statistics and KV caches are per padded row: keep the padded computation
            return original(*args, **kwargs)
        input_ids = kwargs.pop("input_ids", None)
        if input_ids is None and args:
            input_ids, args = args[0], args[1:]
        if input_ids is None or kwargs.get("inputs_embeds") is not None or kwargs.get("position_ids") is not None:
            raise ValueError("packed batches carry input_ids only (no inputs_embeds or position_ids)")
        kwargs.pop("attention_mask", None)  # no mask: transformers derives the per-sequence mask from position ids
        kwargs["use_cache"] = False
        batch, length = input_ids.shape
        flat_ids = input_ids.reshape(-1)
        flat_ids = torch.cat([flat_ids, flat_ids[:1]])  # one filler token for the filler slots of packed_index
        outputs = original(*args, input_ids=flat_ids[packed_index], position_ids=packed_position_ids, **kwargs)
        outputs.last_hidden_state = unpack(outputs.last_hidden_state, packed_index, batch, length)
        if getattr(outputs, "hidden_states", None) is not None:
            outputs.hidden_states = tuple(unpack(h, packed_index, batch, length) for h in outputs.hidden_states)
        return outputs

    forward.lorakit_packed = True
    backbone.forward = forward


def unpack(packed, packed_index, batch: int, length: int):
    """Hidden states of the packed rows ([rows', width', ...]) back at their places in the padded batch, zeros at
    padding. index_copy is differentiable in the source; filler slots land in one extra slot that is dropped."""
    flat = packed.reshape(-1, *packed.shape[2:])
    out = flat.new_zeros((batch * length + 1, *packed.shape[2:]))
    out = out.index_copy(0, packed_index.reshape(-1), flat)
    return out[:-1].view(batch, length, *packed.shape[2:])


# ---------------------------------------------------------------------------------------------------------------
# Probe and plan


def layout_is_exact(model, vocab_size: int, one_row: bool, tolerance: float = 2e-2) -> bool:
    """The packed path against the padded one on a small uneven batch (two pairs, several rows, fillers).
    Several processes get rank 0's answer, as with `speed.packing_is_exact` (one batching for all)."""
    return on_main(lambda: _layout_is_exact(model, vocab_size, one_row, tolerance))


def _layout_is_exact(model, vocab_size: int, one_row: bool, tolerance: float) -> bool:
    import torch

    generator = torch.Generator().manual_seed(1)
    lengths = [9, 4, 6, 12]
    device = next(model.parameters()).device
    width = max(lengths)
    input_ids = torch.randint(0, min(vocab_size, 1000), (len(lengths), width), generator=generator)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    index, positions = packed_layout(lengths, width, one_row, attention_weight=1.0)  # rows of the longest: 3 rows
    input_ids, mask, index, positions = (t.to(device) for t in (input_ids, mask, index, positions))
    backbone = causal_lm_of(model).base_model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            padded = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state.float()
            packed = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False, packed_index=index,
                              packed_position_ids=positions).last_hidden_state.float()
    except Exception as exc:  # a model that rejects packed inputs is not packed; say why, it may be a bug
        warn(f"packed-pairs probe failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return False
    finally:
        model.train(was_training)
    real = mask.bool()
    scale = padded[real].abs().max().clamp(min=1.0)
    return bool(((packed[real] - padded[real]).abs().max() / scale) <= tolerance)


@dataclass
class PackedPairs:
    enabled: bool
    reason: str
    collator: Any = None  # the data_collator to give DPOTrainer (None: TRL's padded one)
    attention: str = "sdpa"  # the attention implementation the model runs with
    attention_reason: str = ""


def plan_packed_pairs(model, tokenizer, setting: bool | str = "auto", attention_setting: str = "auto",
                      compiled: bool = False) -> PackedPairs:
    """Decide padding-free DPO for the loaded model, install the packed path when it is exact, and say why.

    Call it on the loaded (possibly 4-bit, possibly PEFT-wrapped) model before DPOTrainer is built: TRL computes
    precomputed reference log-probs inside its constructor, with the collator it was given.
    """
    lm = causal_lm_of(model)
    attention = attention_implementation(lm.config)
    if setting is False:
        return PackedPairs(False, "padding_free: false in the recipe; length-grouped pairs", attention=attention,
                           attention_reason=f"{attention} (no packed rows)")
    config = lm.config.get_text_config()
    if getattr(config, "output_router_logits", None) is not None and getattr(config, "router_aux_loss_coef", 0):
        return _declined(setting, "MoE router loss is computed over padded rows; length-grouped pairs", attention)
    if lm.config.get_text_config() is not lm.config:
        return _declined(setting, "vision-language model: length-grouped pairs", attention)
    one_row = attention in VARLEN_ATTENTION
    vocab_size = len(tokenizer)
    if not packing_is_exact(model, vocab_size):
        return _declined(setting, f"length-grouped pairs (probe: packed sequences would see each other with "
                                  f"{attention} attention)", attention)
    install_packed_forward(model)
    if not layout_is_exact(model, vocab_size, one_row):
        return _declined(setting, "length-grouped pairs (probe: packed pairs differ from padded ones)", attention)
    # Per-example attention makes a row cost what its sequences cost, so one row per batch (no fillers) is best,
    # as with flash-attention; it is kept only if the probes, several rows with fillers and one row, still pass.
    per_example, attention_reason = try_per_example(
        model, attention_setting, compiled=compiled,
        probe=lambda: (packing_is_exact(model, vocab_size) and layout_is_exact(model, vocab_size, one_row=False)
                       and layout_is_exact(model, vocab_size, one_row=True)))
    one_row = one_row or per_example
    attention = attention_implementation(lm.config)
    # TRL mirrors the pad token onto the model's configs when it builds its own collator; do the same
    lm.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    if getattr(lm, "generation_config", None) is not None:
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
    rows = "one row per batch" if one_row else "rows a few sequences wide"
    return PackedPairs(True, f"padding-free pairs, {rows} (probe: packed == padded)",
                       make_packed_collator(tokenizer.pad_token_id, one_row, attention_weight_of(config)),
                       attention=attention, attention_reason=attention_reason)


def _declined(setting, reason: str, attention: str) -> PackedPairs:
    if setting is True:
        warn(f"padding_free: true, but this model gets {reason}")
    return PackedPairs(False, reason, attention=attention, attention_reason=f"{attention} (no packed rows)")
