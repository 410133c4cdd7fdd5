"""How multi-GPU strategies split a training step's memory across GPUs (per-GPU arithmetic, no torch).

Each strategy keeps some state whole on every GPU and divides the rest by the number of GPUs N:

- ddp (torch DistributedDataParallel, accelerate's default for several processes): every GPU holds the whole model,
  its gradients and optimizer states, plus DDP's gradient buckets, a second gradient-sized buffer (DDP's default
  `gradient_as_bucket_view=False` copies gradients into flat buckets for the all-reduce).
- zero2 (DeepSpeed ZeRO stage 2): optimizer states (with the fp32 master weights under mixed precision) and gradients
  are partitioned, 1/N each; the 16-bit weights stay whole.
- zero3 (DeepSpeed ZeRO stage 3) and fsdp (FULL_SHARD): weights are partitioned too; each GPU gathers one wrapped
  unit (a decoder layer) at a time, and prefetches the next, so two layers are whole at any moment. FSDP's root unit
  (embeddings, final norm, LM head) stays gathered from the start of the forward to the end of the backward; ZeRO-3
  gathers the embeddings and the head only while they run.

Activations are never divided: each GPU runs its own micro-batch. References: Rajbhandari et al., "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models" (2020), section 5 (per-device model-state formulas);
PyTorch DDP docs (gradient_as_bucket_view); PyTorch FSDP docs (sharding strategies, backward prefetch).
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
# Scaling efficiency for time estimates (share of N x one GPU's throughput). Gradient all-reduce overlaps the
# backward well; sharded strategies pay an all-gather per layer and a reduce-scatter. Typical of one node with
# NVLink or PCIe 4; assumptions, not measurements.
EFFICIENCY = {"ddp": 0.90, "zero2": 0.88, "fsdp": 0.80, "zero3": 0.75}
# DeepSpeed's default reduce/all-gather bucket (elements), a buffer in the gradient dtype that ZeRO-2/3 allocate once.
DEEPSPEED_BUCKET = 500_000_000


@dataclass(frozen=True)
class Sharding:
    """Divisors of the model-state terms on one GPU (1: whole on every GPU)."""

    strategy: str
    gpus: int
    weights: int = 1
    gradients: int = 1
    optimizer: int = 1
    gathered_layers: int = 0  # decoder layers held whole at once while weights are sharded
    root_gathered: bool = False  # FSDP: embeddings/head gathered for the whole step
    gradient_buckets: bool = False  # DDP's copy of the gradients
    deepspeed_bucket: bool = False

    @property
    def single(self) -> bool:
        return self.gpus == 1


def sharding(strategy: str, gpus: int) -> Sharding:
    if gpus <= 1:
        return Sharding("single", 1)
    if strategy == "ddp":
        return Sharding(strategy, gpus, gradient_buckets=True)
    if strategy == "zero2":
        return Sharding(strategy, gpus, gradients=gpus, optimizer=gpus, deepspeed_bucket=True)
    if strategy == "zero3":
        return Sharding(strategy, gpus, weights=gpus, gradients=gpus, optimizer=gpus, gathered_layers=2,
                        deepspeed_bucket=True)
    if strategy == "fsdp":
        return Sharding(strategy, gpus, weights=gpus, gradients=gpus, optimizer=gpus, gathered_layers=2,
                        root_gathered=True)
    raise ValueError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
