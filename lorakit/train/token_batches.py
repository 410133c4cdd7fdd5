"""Micro-batches by tokens, not by examples: each forward pass filled with whole examples up to a token budget.

The recipe states an optimizer step in examples: `micro_batch_size x gradient_accumulation_steps` (1 x 8 by
default). Run as written, that is eight forward passes of one example each, and padding-free packing has nothing
to pack; a packed row of short examples costs the memory of one example of the same total length, so eight short
chats fit in one pass. With a token budget the trainer receives all the examples of an optimizer step at once
(padding-free: one row, position ids restarting per example) and `training_step` cuts that row at example
boundaries into forward passes of at most `budget` tokens. Every pass is scaled by the whole step's count of trained
tokens (the `num_items_in_batch` the Trainer computes for the step, as it does for gradient accumulation), so the
gradient is the step's per-token mean exactly as with accumulation: the same examples per optimizer step, the same
loss and learning-rate schedule, the same number of steps, to float rounding (a test). Resuming skips whole steps,
which hold the same examples either way.

The budget (`train.micro_batch_tokens`, `auto` by default) is the planner's: on a CUDA GPU the longest row that fits
it (lorakit.vram.plan.max_seq_len with the run's settings), on the CPU `CPU_BUDGET` tokens; never less than
`data.max_length` (one example must fit) and never more than a whole step's examples at their longest. SFT on one
process only: DPO batches pairs (`micro_batch_size` pairs per pass), and several processes would have to agree on
the number of passes in every step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lorakit.errors import LorakitError
from lorakit.vram.catalog import GPU
from lorakit.vram.plan import max_seq_len
from lorakit.vram.resolve import resolve_shape, setup_from_recipe

CPU_BUDGET = 8192  # tokens per forward pass on the CPU, where nothing smaller than host RAM limits a row


def wants_token_budget(train, processes: int) -> tuple[bool, str]:
    """Whether the recipe asks for token budgets and a run can use them (before any probe)."""
    step = train.micro_batch_size * train.gradient_accumulation_steps
    if train.micro_batch_tokens is None:
        return False, "train.micro_batch_tokens: null (micro_batch_size examples per forward pass)"
    if processes > 1:
        return False, f"{processes} processes: each takes micro_batch_size examples per forward pass"
    if step == 1:
        return False, "one example per optimizer step"
    return True, ""


def choose_token_budget(setting, max_length: int, step_examples: int, device: str, fit_tokens: int | None = None
                        ) -> tuple[int, str]:
    """The token budget and why. `fit_tokens`: on a GPU, the longest row the planner says fits it."""
    ceiling = step_examples * max_length  # a whole step's examples at their longest
    if setting != "auto":
        budget = max(int(setting), max_length)
        why = f"train.micro_batch_tokens: {setting}" + (f" (raised to data.max_length {max_length})"
                                                        if budget > int(setting) else "")
        return budget, why
    if device == "cuda" and fit_tokens:
        budget = max(min(fit_tokens, ceiling), max_length)
        return budget, (f"the longest row that fits this GPU ({fit_tokens:,} tokens)" if budget < ceiling
                        else f"a whole step's examples at data.max_length ({ceiling:,} tokens) fit this GPU")
    budget = max(min(CPU_BUDGET, ceiling), max_length)
    if budget == ceiling:
        return budget, f"a whole step's examples at data.max_length ({ceiling:,} tokens)"
    return budget, f"{device}: {CPU_BUDGET:,} tokens per pass"


def planned_budget(recipe, device: str, device_gib: float | None) -> tuple[int, str]:
    """The run's token budget: `train.micro_batch_tokens`, or for `auto` on a CUDA GPU the longest row the planner
    says fits it (the run's settings, one row)."""
    train = recipe.train
    fit = None
    if train.micro_batch_tokens == "auto" and device == "cuda" and device_gib:
        fit = longest_fitting_row(recipe, device_gib)
    return choose_token_budget(train.micro_batch_tokens, recipe.data.max_length,
                               train.micro_batch_size * train.gradient_accumulation_steps, device, fit)


def longest_fitting_row(recipe, device_gib: float) -> int | None:
    name, setup = setup_from_recipe(recipe)
    try:
        shape = resolve_shape(name)
    except LorakitError:
        return None
    return max_seq_len(shape, replace(setup, batch_size=1), GPU("this", "this GPU", device_gib, 1.0)) or None


def row_tokens(recipe, stage: str, device: str, device_gib: float | None, processes: int) -> int:
    """The longest row a run's forward passes can hold, for the memory decisions taken before its trainer exists:
    the token budget (SFT that batches by tokens), else a micro-batch of examples at data.max_length (a padding-free
    DPO row holds each pair's two sequences)."""
    train, longest = recipe.train, recipe.data.max_length
    if stage == "sft" and wants_token_budget(train, processes)[0]:
        return planned_budget(recipe, device, device_gib)[0]
    return train.micro_batch_size * longest * (2 if stage == "dpo" else 1)


def sequence_bounds(position_ids) -> list[int]:
    """Where each packed example starts in a padding-free row (position ids restart at 0), plus the row's end."""

    row = position_ids[0]
    starts = (row == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return starts + [int(row.shape[0])]


def group_examples(bounds: list[int], budget: int) -> list[tuple[int, int]]:
    """Consecutive examples grouped into [start, end) token ranges of at most `budget` tokens (an example longer
    than the budget gets a range of its own), in order."""
    groups: list[tuple[int, int]] = []
    start = bounds[0]
    for end, next_end in zip(bounds[1:], bounds[2:] + [None]):
        if next_end is None or next_end - start > budget:
            groups.append((start, end))
            start = end
    return groups


SEQUENCE_KEYS = ("input_ids", "labels", "position_ids", "seq_idx", "completion_mask", "assistant_masks")
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def split_row(inputs: dict[str, Any], budget: int) -> list[dict[str, Any]] | None:
    """A padding-free batch (one row) cut into batches of at most `budget` tokens at example boundaries, each with
    its own sequence boundaries; None when the batch is not one padding-free row or holds keys of unknown layout."""
    import torch

    input_ids = inputs.get("input_ids")
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[0] != 1 or "position_ids" not in inputs:
        return None
    if "attention_mask" in inputs or any(key not in SEQUENCE_KEYS + BOUNDARY_KEYS for key in inputs):
        return None
    length = input_ids.shape[1]
    if length <= budget:
        return [inputs]
    groups = group_examples(sequence_bounds(inputs["position_ids"]), budget)
    parts = []
    for start, end in groups:
        part = {key: inputs[key][:, start:end] for key in SEQUENCE_KEYS if key in inputs}
        if "seq_idx" in part:
            part["seq_idx"] = part["seq_idx"] - part["seq_idx"][:, :1]
        if any(key in inputs for key in BOUNDARY_KEYS):
            local = sequence_bounds(part["position_ids"])  # already counted from the part's first token
            bounds = torch.tensor(local, dtype=torch.int32, device=input_ids.device)
            longest = int(max(b - a for a, b in zip(local[:-1], local[1:])))
            part.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)
        parts.append(part)
    return parts


def trained_tokens(labels) -> int:
    """The Trainer's count for a causal LM: shifted labels that are not ignored."""
    return int((labels[..., 1:] != -100).sum())


def token_budgeted(trainer_cls):
    """`trainer_cls` whose training steps run their one padding-free row as forward passes of at most
    `self.lorakit_token_budget` tokens (None: unchanged)."""

    class TokenBudgeted(trainer_cls):
        lorakit_token_budget: int | None = None
        lorakit_passes: list[int] = []  # forward passes per optimizer step (for benchmarks and tests)

        def training_step(self, model, inputs, num_items_in_batch=None):
            budget = self.lorakit_token_budget
            parts = split_row(inputs, budget) if budget else None
            if parts is None or len(parts) == 1:
                if budget:
                    self.lorakit_passes.append(1)
                return super().training_step(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:
                num_items_in_batch = trained_tokens(inputs["labels"])
            self.lorakit_passes.append(len(parts))
            total = None
            for part in parts:
                loss = super().training_step(model, part, num_items_in_batch)
                total = loss if total is None else total + loss
            return total

    TokenBudgeted.__name__ = TokenBudgeted.__qualname__ = f"TokenBudgeted{trainer_cls.__name__}"
    return TokenBudgeted
