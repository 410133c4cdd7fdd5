"""Will a server load this adapter? Checked from the recipe's LoRA section before training (pure: no torch).

PEFT trains and merges every LoRA variant, but vLLM's LoRA loader (vllm/lora/peft_helper.py, 0.32) refuses some:
DoRA, LoRA bias, `modules_to_save` other than a classifier head, and ranks above its largest `--max-lora-rank`
choice. Those runs still merge into a plain model that every server loads, so training warns instead of refusing.
"""

from __future__ import annotations

# vLLM's `--max-lora-rank` accepts only these values (vllm/config/lora.py MaxLoRARanks); 16 is its default. An
# adapter of rank r serves with any value >= r: the smallest one reserves the least memory.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# modules_to_save vLLM accepts (classification heads); an lm_head or embed_tokens copy is refused.
VLLM_MODULES_TO_SAVE = ("classifier", "score")


def vllm_max_lora_rank(r: int) -> int | None:
    """The `--max-lora-rank` value that serves rank `r` (None above vLLM's largest)."""
    return next((choice for choice in VLLM_MAX_LORA_RANKS if choice >= r), None)


def vllm_lora_problems(lora) -> list[str]:
    """What in a LoRA section (lorakit.config.LoraSection) vLLM's LoRA loader refuses, one phrase each."""
    problems = []
    if lora.use_dora:
        problems.append("DoRA (lora.use_dora: true)")
    if lora.bias != "none":
        problems.append(f"LoRA bias (lora.bias: {lora.bias})")
    unsupported = [m for m in lora.modules_to_save if m not in VLLM_MODULES_TO_SAVE]
    if unsupported:
        problems.append(f"lora.modules_to_save {unsupported} (vLLM takes only {', '.join(VLLM_MODULES_TO_SAVE)})")
    if vllm_max_lora_rank(lora.r) is None:
        problems.append(f"lora.r {lora.r} (vLLM's --max-lora-rank goes up to {VLLM_MAX_LORA_RANKS[-1]})")
    return problems


def vllm_lora_notes(lora) -> list[str]:
    """Servable, but only with a flag: what serve-info adds to the vLLM command line."""
    choice = vllm_max_lora_rank(lora.r)
    if choice is None or choice == VLLM_DEFAULT_MAX_LORA_RANK or lora.r <= VLLM_DEFAULT_MAX_LORA_RANK:
        return []
    if choice != lora.r:
        return [f"rank {lora.r} is not one of vLLM's --max-lora-rank values: serve it with --max-lora-rank {choice}"]
    return [f"rank {lora.r} is above vLLM's default --max-lora-rank 16: serve it with --max-lora-rank {choice}"]


def servability_warning(lora) -> str | None:
    """One line for the training log (and the run's `warnings`): what will not serve, and what to do instead; or
    the vLLM flag a rank above its default needs. None when the adapter serves as it stands."""
    problems = vllm_lora_problems(lora)
    if problems:
        return (f"vLLM will not serve this adapter as a LoRA ({'; '.join(problems)}): merge it (`lorakit merge RUN`) "
                "and serve the merged model, or change the setting")
    notes = vllm_lora_notes(lora)
    if notes:
        return f"vLLM serves this adapter only with a flag: {notes[0]} (`lorakit serve-info RUN` prints it)"
    return None
