"""Faster sampling for GRPO with transformers' `generate`, where it is exact: two levers around the one call TRL makes.

- Merged LoRA weights. Unmerged, every adapted linear layer runs its LoRA branch at every decoding step (two more
  small matmuls and the Python around them, for each of ~200 layers of a 30-layer model). For the duration of the
  call, each adapted base weight is swapped for base + B·A·scale (PEFT's own `get_delta_weight`) and the adapters are
  disabled; afterwards the original tensors are put back (the same tensor objects, so the frozen base is bit-for-bit
  what it was: no merge/unmerge rounding). Only for plain LoRA on a full-precision base: a 4-bit base cannot take a
  merged weight without re-quantizing, DoRA's magnitude does not merge linearly, and `modules_to_save` would be
  switched off with the adapters. Sampling then sees the policy without LoRA dropout, as vLLM's does.
- One prefill per group. TRL repeats each prompt `num_generations` times before generating, so the prompt's tokens
  go through the model once per completion. Here each group's prompt is prefilled once into a KV cache, the cache is
  repeated for the group (transformers' `DynamicCache.batch_repeat_interleave`), and generation continues from it,
  as transformers documents for re-using a prompt's cache (the cache keyword's name: lorakit.compat.cache_keyword).

TRL reaches generation through `model.generate(input_ids=..., attention_mask=..., generation_config=...)` on the
unwrapped PeftModel (trl 1.16, `_generate_single_turn`); lorakit wraps that method on the model instance, so
nothing private of TRL's is touched. Off the CPU (CUDA) lorakit leaves generation to TRL or vLLM.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from lorakit.compat import cache_keyword


def lora_linears(model) -> list[Any]:
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if any(type(m) is not LoraLinear for m in layers):
        return []  # embeddings, convolutions, quantized linears: not merged here
    return layers


@contextlib.contextmanager
def merged_lora(model) -> Iterator[None]:
    """The active adapter folded into the base weights, adapters off, for the block; the base restored after."""
    import torch

    adapter = model.active_adapter
    swapped = []
    with torch.no_grad():
        for layer in lora_linears(model):
            if adapter not in layer.lora_A:
                continue
            base = layer.get_base_layer()
            original = base.weight.data
            base.weight.data = original + layer.get_delta_weight(adapter).to(original.dtype)
            swapped.append((base, original))
    try:
        with model.disable_adapter():
            yield
    finally:
        for base, original in swapped:
            base.weight.data = original


def group_size(input_ids, attention_mask) -> int:
    """k when the rows come in runs of k identical prompts (TRL's RepeatSampler order), else 1."""
    import torch

    rows = input_ids.shape[0]
    if rows < 2:
        return 1
    same = (input_ids[1:] == input_ids[:-1]).all(-1)
    if attention_mask is not None:
        same &= (attention_mask[1:] == attention_mask[:-1]).all(-1)
    starts = [0] + [i + 1 for i in torch.nonzero(~same).flatten().tolist()]
    sizes = {b - a for a, b in zip(starts, starts[1:] + [rows])}
    return sizes.pop() if len(sizes) == 1 else 1


def shared_prefill(model, input_ids, attention_mask, k: int):
    """A DynamicCache of every row's prompt but its last token, computed once per group and repeated k times."""
    import torch
    from transformers import DynamicCache

    unique_ids, unique_mask = input_ids[::k, :-1], attention_mask[::k, :-1]
    position_ids = unique_mask.long().cumsum(-1) - 1  # as generate numbers left-padded rows
    position_ids.masked_fill_(unique_mask == 0, 1)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=unique_ids, attention_mask=unique_mask, position_ids=position_ids, use_cache=True,
              **{cache_keyword(model): cache})
    cache.batch_repeat_interleave(k)
    return cache


@dataclass
class FastGeneration:
    """What lorakit does around TRL's generate call, and why not more."""

    model: Any = None
    merge: bool = False
    share_prefill: bool = False
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str | None:
        levers = [name for name, on in (("merged LoRA weights", self.merge),
                                        ("one prefill per group", self.share_prefill)) if on]
        return ", ".join(levers) or None

    def apply(self) -> str | None:
        """Wrap the model's generate; returns the description for the run's first lines (None: untouched)."""
        if not (self.merge or self.share_prefill):
            return None
        model = self.model
        original = model.generate
        plan = self

        def generate(*args, **kwargs):
            merging = merged_lora(model) if plan.merge else contextlib.nullcontext()
            with merging:
                input_ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
                given = any(kwargs.get(name) is not None for name in ("cache", "past_key_values"))
                if (plan.share_prefill and not args and input_ids is not None and mask is not None and not given
                        and input_ids.shape[1] > 1):
                    k = group_size(input_ids, mask)
                    if k > 1:
                        kwargs[cache_keyword(model)] = shared_prefill(model, input_ids, mask, k)
                return original(*args, **kwargs)

        generate.lorakit_fast_generation = True
        model.generate = generate
        return self.describe()


def fast_generation_plan(model, device: str, method: str, lora) -> FastGeneration:
    """Which levers apply to this policy on this device."""
    plan = FastGeneration(model=model)
    if device != "cpu":
        plan.reasons.append(f"{device}: generation is left to TRL (or vLLM)")
        return plan
    plan.share_prefill = True
    if method != "lora":
        plan.reasons.append("4-bit base: LoRA weights cannot be merged without re-quantizing")
    elif lora.use_dora or lora.modules_to_save:
        plan.reasons.append("DoRA / modules_to_save do not merge by a weight swap")
    elif not hasattr(model, "disable_adapter") or not lora_linears(model):
        plan.reasons.append("no plain LoRA linear layers to merge")
    else:
        plan.merge = True
    return plan
