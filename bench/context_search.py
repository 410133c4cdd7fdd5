"""The max-context search of bench/gpu_check.py: the longest sequence that trains one step, for any trainer.

No lorakit import: bench/unsloth_side.py runs this module in Unsloth's own environment.

A side supplies `try_length(n) -> bool` (one optimizer step on one sequence of n tokens, False on out-of-memory);
`longest_trainable` binary-searches n in steps of `step` tokens between a length known to train and one known not
to (or the upper bound), starting from a guess (the planner's estimate, for lorakit). `cap_memory` makes a big GPU
behave like a smaller card: the caching allocator refuses allocations past what the card would leave after its
CUDA context. What lives outside the allocator (paged optimizer states, pinned host buffers for offloaded
activations) is not capped, as on the card itself.
"""

from __future__ import annotations

import gc
from typing import Callable

CONTEXT_GIB = 0.5  # the CUDA context a real card spends outside the allocator (lorakit.vram.estimate's default)


def cap_memory(card_gib: float | None) -> str:
    """Limit this process's CUDA allocator to what a card of `card_gib` leaves after its CUDA context."""
    import torch

    if not card_gib or not torch.cuda.is_available():
        return "no cap (CPU, or none asked)"
    total = torch.cuda.get_device_properties(0).total_memory / 1024**3
    fraction = min(1.0, (card_gib - CONTEXT_GIB) / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return f"allocator capped at {card_gib - CONTEXT_GIB:.1f} GiB of {total:.1f} (a {card_gib:g} GiB card)"


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def longest_trainable(try_length: Callable[[int], bool], high: int, guess: int | None = None, step: int = 1024,
                      low: int = 0, log=print) -> dict:
    """The longest multiple of `step` in (low, high] for which `try_length` succeeds; every try is logged and
    returned. `guess` (rounded to `step`) is tried first."""
    tries: list[tuple[int, bool]] = []

    def attempt(n: int) -> bool:
        try:
            ok = bool(try_length(n))
        except Exception as exc:  # only memory means "does not fit"; anything else is a failure of the side
            if not is_out_of_memory(exc):
                raise
            ok = False
        free()
        tries.append((n, ok))
        log(f"    {n:7d} tokens: {'trains' if ok else 'out of memory'}")
        return ok

    lo, hi = low // step, high // step  # in steps; lo trains (or is 0), hi is the bound
    if guess:
        mid = min(max(guess // step, lo + 1), hi)
        if attempt(mid * step):
            lo = mid
        else:
            hi = mid - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if attempt(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return {"max_context": lo * step, "tries": tries, "step": step, "bound": high}


def one_document(tokenizer, length: int, seed: int = 0) -> dict:
    """One pre-tokenized training row of exactly `length` tokens, every token trained (the sides' collators read
    `input_ids` and either `labels` or `completion_mask`)."""
    import random

    rng = random.Random(seed + length)
    vocab = min(len(tokenizer), 1000)  # ids every vocabulary has
    ids = [rng.randrange(3, vocab) for _ in range(length)]
    return {"input_ids": ids, "labels": list(ids), "completion_mask": [1] * length, "length": length}
