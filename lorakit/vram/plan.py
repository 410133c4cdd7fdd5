"""What fits where: the verdict on a GPU, the largest micro-batch and sequence, the cheapest fixes, and time."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lorakit.vram.catalog import GPU
from lorakit.vram.estimate import GIB, Estimate, Setup, estimate, tiling_pays
from lorakit.vram.shapes import ModelShape
from lorakit.vram.sharding import EFFICIENCY, STRATEGIES

MAX_BATCH = 256
MAX_SEQ = 262_144
SEQ_STEP = 128
# Model FLOPs utilization assumed for the time estimate: typical of single-GPU HF/PEFT training with bf16
# (QLoRA pays for dequantizing every weight on every pass).
UTILIZATION = {"full": 0.40, "lora": 0.40, "qlora": 0.30}


def fits(est: Estimate, gpu: GPU) -> bool:
    return est.total_on(gpu.memory_gib) <= gpu.memory_gib * GIB


def margin_gib(est: Estimate, gpu: GPU) -> float:
    return gpu.memory_gib - est.total_on(gpu.memory_gib) / GIB


def on_gpu(shape: ModelShape, setup: Setup, gpu: GPU) -> Estimate:
    """The estimate with lorakit's memory-dependent `auto` choices made for this GPU (tiled MLPs only where the run
    would not fit without them)."""
    if setup.tiled_mlp == "auto":
        setup = replace(setup, tiled_mlp=tiling_pays(shape, setup, gpu.memory_gib * GIB)[0])
    return estimate(shape, setup)


def max_batch(shape: ModelShape, setup: Setup, gpu: GPU) -> int:
    """Largest micro-batch that fits (0: not even one sequence)."""
    best = 0
    for batch in range(1, MAX_BATCH + 1):
        if not fits(on_gpu(shape, replace(setup, batch_size=batch), gpu), gpu):
            break
        best = batch
    return best


def max_seq_len(shape: ModelShape, setup: Setup, gpu: GPU) -> int:
    """Longest sequence (a multiple of 128) that fits at the setup's micro-batch (0: none)."""
    low, high = 0, MAX_SEQ // SEQ_STEP
    while low < high:
        mid = (low + high + 1) // 2
        if fits(on_gpu(shape, replace(setup, seq_len=mid * SEQ_STEP), gpu), gpu):
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
    if s.stage != "inference" and s.tiled_mlp is not True and s.grad_checkpointing:
        changes.append(("tiled MLP (train.tiled_mlp: true; one more MLP forward per layer)", {"tiled_mlp": True}))
    if s.stage != "inference" and not s.activation_offloading:
        changes.append(("activation offloading (saved activations in pinned host RAM; slower)",
                        {"activation_offloading": True}))
    if s.num_gpus > 1 and s.strategy in ("ddp", "zero2"):
        changes.append((f"strategy: fsdp (shards the weights over {s.num_gpus} GPUs)", {"strategy": "fsdp"}))
    return changes


def suggestions(shape: ModelShape, setup: Setup, gpu: GPU) -> list[dict[str, Any]]:
    """When it does not fit: the single changes that make it fit, cheapest first, or else the cheapest cumulative
    set that does; then the longest sequence that fits (it truncates data, so it comes last)."""
    changes = _candidate_changes(shape, setup, gpu)
    found = []
    for label, change in changes:
        est = on_gpu(shape, replace(setup, **change), gpu)
        if fits(est, gpu):
            found.append({"change": label, "total_gib": round(est.total / GIB, 2)})
    if not found:
        combined: dict[str, Any] = {}
        labels = []
        for label, change in changes:
            combined.update(change)
            labels.append(label)
            est = on_gpu(shape, replace(setup, **combined), gpu)
            if fits(est, gpu):
                found.append({"change": " + ".join(labels), "total_gib": round(est.total / GIB, 2)})
                break
    seq = max_seq_len(shape, setup, gpu)
    if seq:
        est = on_gpu(shape, replace(setup, seq_len=seq), gpu)
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
    """Wall-clock hours per 1M training tokens on `setup.num_gpus` such GPUs (data parallel: each GPU its share)."""
    s = setup.resolved()
    peak = gpu.tflops_16 * 1e12 * (0.5 if s.dtype == "fp32" else 1.0) / (4 if s.dtype == "fp32" else 1)
    gpus = s.num_gpus * (EFFICIENCY[s.strategy] if s.num_gpus > 1 else 1.0)
    return flops_per_token(shape, setup) * 1e6 / (peak * UTILIZATION[s.method] * gpus) / 3600


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
    est = on_gpu(shape, setup, gpu)
    ok = fits(est, gpu)
    return GpuVerdict(gpu, est, ok, margin_gib(est, gpu), max_batch(shape, setup, gpu),
                      max_seq_len(shape, setup, gpu), hours_per_million_tokens(shape, setup, gpu),
                      [] if ok else suggestions(shape, setup, gpu))


@dataclass
class Option:
    """N GPUs of one kind with the strategy that fits best (fastest; the least memory among equals)."""

    gpu: GPU
    gpus: int
    strategy: str
    estimate: Estimate
    hours_per_million_tokens: float

    @property
    def label(self) -> str:
        return f"{self.gpus} x {self.gpu.name}" + (f" ({self.strategy})" if self.gpus > 1 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu.key, "gpus": self.gpus, "strategy": self.strategy if self.gpus > 1 else None,
                "per_gpu_gib": round(self.estimate.total / GIB, 2),
                "hours_per_million_tokens": round(self.hours_per_million_tokens, 3)}


def best_option(shape: ModelShape, setup: Setup, gpu: GPU, gpus: int) -> Option | None:
    """The strategy (or the single GPU) that fits `gpus` x `gpu` and trains fastest; None when none fits."""
    if not gpu.bf16 and setup.dtype == "bf16":
        setup = replace(setup, dtype="fp16")
    strategies = STRATEGIES if gpus > 1 else ("ddp",)
    found = []
    for strategy in strategies:
        s = replace(setup, num_gpus=gpus, strategy=strategy)
        if s.optimizer_in_backward and gpus > 1:
            continue
        est = on_gpu(shape, s, gpu)
        if fits(est, gpu):
            found.append(Option(gpu, gpus, strategy, est, hours_per_million_tokens(shape, s, gpu)))
    return min(found, key=lambda o: (o.hours_per_million_tokens, o.estimate.total), default=None)


def multi_gpu_comparisons(shape: ModelShape, setup: Setup, gpus: list[GPU], count: int = 2) -> list[dict[str, Any]]:
    """When `count` smaller GPUs beat one bigger one: one of them does not fit, `count` of them do (with their best
    strategy), and they train faster than the smallest single GPU with more memory that fits (or no single GPU
    in the catalog fits at all)."""
    singles = {g.key: best_option(shape, setup, g, 1) for g in gpus}
    fitting_singles = sorted((o for o in singles.values() if o), key=lambda o: (o.gpu.memory_gib, o.gpu.tflops_16))
    found = []
    for gpu in sorted(gpus, key=lambda g: (g.memory_gib, g.tflops_16)):
        if singles[gpu.key] is not None:
            continue  # fits alone: more of the same GPU is just faster, not a way to fit
        several = best_option(shape, setup, gpu, count)
        if several is None:
            continue
        label = f"{count} x {gpu.name} with {several.strategy} ({several.estimate.total / GIB:.1f} GiB each)"
        bigger = next((o for o in fitting_singles if o.gpu.memory_gib > gpu.memory_gib), None)
        if bigger is None:
            found.append({"several": several.to_dict(), "single": None,
                          "line": f"{label} fit where no single GPU in the catalog does"})
            continue
        speedup = bigger.hours_per_million_tokens / several.hours_per_million_tokens
        if speedup < 1.05:  # within the time model's error: not a reason to buy two
            continue
        found.append({"several": several.to_dict(), "single": bigger.to_dict(), "speedup": round(speedup, 2),
                      "line": f"{label} fit where one does not, and train {speedup:.1f}x faster than 1 x "
                              f"{bigger.gpu.name} ({bigger.estimate.total / GIB:.1f} GiB), the smallest single GPU "
                              f"that fits"})
    return found
