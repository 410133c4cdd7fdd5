"""What fits where: the verdict on a GPU, the largest micro-batch and sequence, the cheapest fixes, and time."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lorakit.vram.catalog import GPU
from lorakit.vram.estimate import GIB, Estimate, Setup, estimate
from lorakit.vram.shapes import ModelShape

MAX_BATCH = 256
MAX_SEQ = 262_144
SEQ_STEP = 128
# Model FLOPs utilization assumed for the time estimate: typical of single-GPU HF/PEFT training with bf16
# (QLoRA pays for dequantizing every weight on every pass).
UTILIZATION = {"full": 0.40, "lora": 0.40, "qlora": 0.30}


def fits(est: Estimate, gpu: GPU) -> bool:
    return est.total <= gpu.memory_gib * GIB


def margin_gib(est: Estimate, gpu: GPU) -> float:
    return gpu.memory_gib - est.total / GIB


def max_batch(shape: ModelShape, setup: Setup, gpu: GPU) -> int:
    """Largest micro-batch that fits (0: not even one sequence)."""
    best = 0
    for batch in range(1, MAX_BATCH + 1):
        if not fits(estimate(shape, replace(setup, batch_size=batch)), gpu):
            break
        best = batch
    return best


def max_seq_len(shape: ModelShape, setup: Setup, gpu: GPU) -> int:
    """Longest sequence (a multiple of 128) that fits at the setup's micro-batch (0: none)."""
    low, high = 0, MAX_SEQ // SEQ_STEP
    while low < high:
        mid = (low + high + 1) // 2
        if fits(estimate(shape, replace(setup, seq_len=mid * SEQ_STEP)), gpu):
            low = mid
        else:
            high = mid - 1
    return low * SEQ_STEP


def _candidate_changes(shape: ModelShape, setup: Setup, gpu: GPU) -> list[tuple[str, dict[str, Any]]]:
    """Changes in order of what they cost: nothing, then speed, then quality, then data."""
    s = setup.resolved()
    changes: list[tuple[str, dict[str, Any]]] = []
    if s.loss != "fused" and s.stage != "inference":
        changes.append(("loss: fused (no full logits)", {"loss": "fused"}))
    if s.stage == "dpo":
        changes.append(("precompute reference log-probs", {"stage": "dpo-precomputed"}))
    if s.attn == "eager":
        changes.append(("attention: sdpa", {"attn": "sdpa"}))
    if not s.grad_checkpointing and s.stage != "inference":
        changes.append(("gradient checkpointing on", {"grad_checkpointing": True}))
    if s.optimizer not in ("paged-adamw-8bit", "adamw-8bit", "sgd") and s.stage != "inference":
        changes.append(("optimizer: paged-adamw-8bit", {"optimizer": "paged-adamw-8bit"}))
    if s.batch_size > 1:
        changes.append((f"micro-batch 1 (gradient accumulation x{s.batch_size} keeps the batch)", {"batch_size": 1}))
    if s.method != "qlora":
        changes.append(("method: qlora (4-bit base)", {"method": "qlora", "optimizer": None,
                                                       "upcast_non_quantized": None}))
    return changes


def suggestions(shape: ModelShape, setup: Setup, gpu: GPU) -> list[dict[str, Any]]:
    """When it does not fit: the single changes that make it fit, cheapest first, or else the cheapest cumulative
    set that does; then the longest sequence that fits (it truncates data, so it comes last)."""
    changes = _candidate_changes(shape, setup, gpu)
    found = []
    for label, change in changes:
        est = estimate(shape, replace(setup, **change))
        if fits(est, gpu):
            found.append({"change": label, "total_gib": round(est.total / GIB, 2)})
    if not found:
        combined: dict[str, Any] = {}
        labels = []
        for label, change in changes:
            combined.update(change)
            labels.append(label)
            est = estimate(shape, replace(setup, **combined))
            if fits(est, gpu):
                found.append({"change": " + ".join(labels), "total_gib": round(est.total / GIB, 2)})
                break
    seq = max_seq_len(shape, setup, gpu)
    if seq:
        est = estimate(shape, replace(setup, seq_len=seq))
        found.append({"change": f"seq-len {seq} (truncates longer examples)", "total_gib": round(est.total / GIB, 2)})
    return found


def flops_per_token(shape: ModelShape, setup: Setup) -> float:
    """Training FLOPs per token: 2N forward, 2N for input gradients, 2N more for weight gradients (full only),
    2N to recompute with checkpointing, plus attention (4 * layers * heads * head_dim * seq, causal, x3)."""
    s = setup.resolved()
    n = shape.active_params - shape.embed_params
    attention = 2 * shape.layers * shape.heads * shape.dim * s.seq_len
    if s.stage == "inference":
        return 2 * n + attention
    passes = 3 if s.method == "full" else 2
    passes += 1 if s.grad_checkpointing else 0
    total = passes * (2 * n + attention)
    if s.stage == "dpo":
        total += 2 * n + attention  # the reference forward
    return total


def hours_per_million_tokens(shape: ModelShape, setup: Setup, gpu: GPU) -> float:
    s = setup.resolved()
    peak = gpu.tflops_16 * 1e12 * (0.5 if s.dtype == "fp32" else 1.0) / (4 if s.dtype == "fp32" else 1)
    return flops_per_token(shape, setup) * 1e6 / (peak * UTILIZATION[s.method]) / 3600


@dataclass
class GpuVerdict:
    gpu: GPU
    estimate: Estimate
    fits: bool
    margin_gib: float
    max_batch: int
    max_seq_len: int
    hours_per_million_tokens: float
    suggestions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu.key, "name": self.gpu.name, "memory_gib": self.gpu.memory_gib, "fits": self.fits,
                "margin_gib": round(self.margin_gib, 2), "max_micro_batch": self.max_batch,
                "max_seq_len": self.max_seq_len,
                "hours_per_million_tokens": round(self.hours_per_million_tokens, 3),
                "suggestions": self.suggestions}


def verdict(shape: ModelShape, setup: Setup, gpu: GPU) -> GpuVerdict:
    if not gpu.bf16 and setup.dtype == "bf16":
        setup = replace(setup, dtype="fp16")  # what lorakit picks on GPUs without bf16 (T4)
    est = estimate(shape, setup)
    ok = fits(est, gpu)
    return GpuVerdict(gpu, est, ok, margin_gib(est, gpu), max_batch(shape, setup, gpu),
                      max_seq_len(shape, setup, gpu), hours_per_million_tokens(shape, setup, gpu),
                      [] if ok else suggestions(shape, setup, gpu))
