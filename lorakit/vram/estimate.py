"""The GPU-memory estimate: every term that makes up a training (or inference) step's peak, in bytes.

Pure arithmetic over a ModelShape and a Setup. The model of each term, and why:

- Peak = persistent state + the larger of the forward/backward phase and the optimizer-step phase (the
  optimizer's temporaries exist only after activations are freed, so they do not add to them).
- Activations are the tensors autograd saves for backward, counted per token per layer from the dtype each tensor
  has on its way through a transformers decoder layer (`_Flow`): RMSNorm keeps an fp32 copy of its input;
  SDPA/flash keep q, k, v, the output and a log-sum-exp; eager attention also keeps the s x s probabilities; the MLP
  keeps its gate/up outputs and the SiLU output; a linear that needs its input for a weight gradient (full
  fine-tuning, LoRA's A matrix, bitsandbytes < 0.43.2's 4-bit layers) keeps it, shared with the other consumers of
  that tensor when it computes in the tensor's own dtype, as its own cast copy when it does not (autocast, PEFT's
  fp32 adapters, a 4-bit layer's compute dtype). These counts are checked exactly against real tensors on the CPU
  (tests/integration/test_vram_measured.py). Gradient checkpointing keeps one hidden state per layer plus one layer
  recomputed at a time.
- QLoRA through PEFT's prepare_model_for_kbit_training makes the embeddings, norms and head fp32, so the residual
  stream and everything a 4-bit layer returns (bitsandbytes casts its output back to its input's dtype) are fp32:
  q/k/v and the MLP intermediates double in size, and under autocast the fp32 head is cast to 16-bit and that copy is
  kept for backward.
- Plain cross-entropy keeps ~14 bytes per token per vocabulary entry at its backward peak (16-bit logits, an fp32
  copy and log-softmax, and fp32 gradients); a chunked loss keeps the 16-bit logits and their gradient; a fused
  linear+loss keeps one chunk.
- QLoRA stores the decoder's linear weights as 4-bit NF4 (0.5 byte) plus absmax constants (fp32 per 64 weights,
  or 8-bit per 64 + fp32 per 256 blocks with double quantization); each layer is dequantized to 16-bit one matrix
  at a time while it runs.
- Paged bitsandbytes optimizer states live in CUDA unified memory, outside PyTorch's allocator: they count
  toward the GPU total (they spill to host RAM under pressure, slowly) but not toward torch's allocated peak.
- Several GPUs (lorakit.vram.sharding): weights, gradients and optimizer states divided as each strategy does.
- GRPO (stage grpo): a micro-batch is `batch_size` completions, each `seq_len` tokens (prompt + completion) through
  the training forward, only `completion_len` of them through the LM head. Before the step the policy samples a
  generation batch (micro-batch x accumulation completions) with a KV cache of `seq_len` tokens per completion: a
  phase of its own (generation), after which the cache is freed. vLLM in the same process (colocate) keeps its own
  16-bit weights and KV cache and reserves `vllm_gpu_share` of the GPU (vllm_gpu_memory_utilization); with sleep
  mode it releases them for the training step. With beta > 0 and a parent adapter a frozen copy of the adapter is
  the reference; the reference forward is transient, like DPO's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lorakit.vram.shapes import LINEAR_NAMES, ModelShape
from lorakit.vram.sharding import DEEPSPEED_BUCKET, STRATEGIES, sharding

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "adafactor")
ATTENTION = ("eager", "sdpa", "flash")
LOSSES = ("plain", "chunked", "fused")
STAGES = ("sft", "dpo", "dpo-precomputed", "grpo", "inference")
GENERATION = ("transformers", "vllm")
QUANTS = ("nf4", "fp4", "int8", "w4a16", "w8a8", "fp8")
# compressed-tensors checkpoints as vLLM holds them (lorakit quantize --format ...): inference only.
SERVED_QUANTS = ("w4a16", "w8a8", "fp8")
W4A16_GROUP = 128  # one 16-bit scale per 128 weights of a row (symmetric: no zero point)
FUSED_BUFFER = 64 * 1024**2
OFFLOAD_KEPT_LAYERS = 2  # activation offloading: the layer in flight and the one prefetched stay on the GPU
MIN_TILE_TOKENS = 1024  # a tiled MLP's tiles: never shorter (matmuls of fewer rows lose speed), else the hidden size


def mlp_tile_tokens(hidden: int) -> int:
    """Tokens per tile of a sequence-tiled MLP: the hidden size (Arctic Long Sequence Training's choice, which keeps a
    tile's intermediates about the size of one weight matrix), at least MIN_TILE_TOKENS."""
    return max(MIN_TILE_TOKENS, hidden)


@dataclass(frozen=True)
class Constants:
    """The estimate's numbers that are not exact byte counts of tensors (bench/vram_calibration.py checks them by
    leave-one-source-out)."""

    plain_ce_bytes: float = 12.0  # fp32 log-softmax + two fp32 gradients per token per vocab entry (+ the logits)
    chunked_factor: float = 3.0  # chunked loss: 16-bit logits, their gradient, one chunk's fp32 temporaries
    recompute_grads: float = 2.0  # fp32 hidden-state gradients alive while a checkpointed layer recomputes
    allocator_slack: float = 1.10  # reserved / allocated for steady training steps (measured 1.05-1.3)


K = Constants()
ALLOCATOR_SLACK = K.allocator_slack


@dataclass(frozen=True)
class Setup:
    """Everything about a run that changes its memory, with lorakit's defaults for a 24 GB GPU."""

    method: str = "qlora"
    dtype: str = "bf16"
    mixed_precision: bool | None = None  # fp32 master weights/adapters; None: fp32 LoRA, bf16 QLoRA adapters (TRL)
    seq_len: int = 2048
    batch_size: int = 1
    grad_checkpointing: bool = True
    optimizer: str | None = None  # None: paged 8-bit AdamW for QLoRA, AdamW otherwise (lorakit's choice)
    lora_r: int = 16
    lora_targets: tuple[str, ...] | str = "all-linear"
    lora_dropout: float = 0.05
    attn: str = "sdpa"
    loss: str = "fused"  # lorakit uses TRL's fused/chunked head on CUDA
    stage: str = "sft"
    double_quant: bool = True
    # fp32 non-quantized weights of a k-bit base: True/"all" (PEFT's prepare_model_for_kbit_training), "norms" (TRL
    # < 0.20 cast embeddings and head back to 16-bit), False; None: all for a quantized base on one GPU, none when
    # FSDP/ZeRO-3 shard it; "auto": lorakit's QLoRA (qlora.upcast_to_fp32: auto): none in bf16, all in fp16
    upcast_non_quantized: bool | str | None = None
    device: str = "cuda"
    grad_accumulation: int = 1  # > 1: gradients of earlier micro-batches coexist with activations
    logits_fp32: bool = True  # transformers' causal-LM loss upcasts logits to fp32
    bnb_saves_inputs: bool = False  # bitsandbytes < 0.43.2 kept every 4-bit linear's input for backward
    # ... on ctx, so they live until the graph is released: a loop that keeps `loss` (or the logits) referenced
    # into the next micro-batch (litgpt's) holds the previous micro-batch's inputs during the next forward
    bnb_inputs_outlive_step: bool = False
    foreach_optimizer: bool = True  # torch's multi-tensor AdamW; per-parameter loops (transformers' old AdamW) keep no temporary
    cuda_context_gib: float = 0.5  # torch >= 2 with lazy kernel loading; older stacks loaded ~1.3 GiB of kernels
    quant: str | None = None  # base weights: nf4 | fp4 | int8; None: nf4 for qlora, 16-bit otherwise
    autocast: bool | None = None  # None: under mixed precision on CUDA (the HF Trainer's bf16=True)
    activation_offloading: bool = False  # saved activations go to pinned host memory (TRL activation_offloading)
    optimizer_in_backward: bool = False  # each parameter is stepped as its gradient arrives (torchtune)
    num_gpus: int = 1
    strategy: str = "ddp"  # with num_gpus > 1: ddp | fsdp | zero2 | zero3
    quantize_head: bool = False  # the LM head is 4-bit too (Lightning's bitsandbytes plugin converts every Linear)
    # GRPO (stage grpo)
    completion_len: int = 256  # tokens generated per completion (max_completion_length); seq_len = prompt + this
    generation_batch: int | None = None  # completions sampled per round; None: batch_size x grad_accumulation (TRL)
    generation: str = "transformers"  # transformers | vllm (colocated)
    vllm_gpu_share: float = 0.3  # vllm_gpu_memory_utilization: the share of the GPU vLLM reserves
    vllm_sleep: bool = False  # vLLM sleep mode: its memory is released during the training step
    grpo_reference: bool = False  # beta > 0 continuing an adapter: a frozen 'ref' copy of it is the reference
    # each decoder MLP runs over the sequence in tiles, one tile's intermediates at a time (lorakit.train.tiling);
    # "auto": when one layer's working set is the largest activation term (tiling_pays)
    tiled_mlp: bool | str = False

    def resolved(self) -> "Setup":
        optimizer = self.optimizer or ("paged-adamw-8bit" if self.method == "qlora" else "adamw")
        # LoRA adapters train in fp32 (PEFT's autocast_adapter_dtype) except on a 4-bit base, where TRL >= 1 casts
        # them to bf16 (as the QLoRA paper does); full fine-tuning trains the weights in their dtype unless told
        mixed = self.mixed_precision if self.mixed_precision is not None else self.method == "lora"
        targets = self.lora_targets
        if isinstance(targets, str):
            targets = LINEAR_NAMES if targets in ("all-linear", "all") else tuple(t.strip() for t in targets.split(","))
        quant = self.quant or ("nf4" if self.method == "qlora" else None)
        training = self.stage != "inference"
        # sharded QLoRA (FSDP/ZeRO-3 with a 16-bit quant storage) keeps every weight in one dtype: TRL and the PEFT
        # docs skip prepare_model_for_kbit_training's fp32 upcast there
        sharded = self.num_gpus > 1 and self.strategy in ("fsdp", "zero3")
        upcast = self.upcast_non_quantized if self.upcast_non_quantized is not None else (
            quant is not None and training and not sharded)
        if upcast == "auto":  # lorakit: the compute dtype, except fp16 (whose range a 16-bit residual can overflow)
            upcast = quant is not None and training and not sharded and self.dtype == "fp16"
        # the HF Trainer's bf16/fp16 flag runs the forward under autocast; full fine-tuning in pure 16-bit does not
        autocast = self.autocast if self.autocast is not None else bool(
            self.device == "cuda" and training and (mixed if self.method == "full" else self.dtype != "fp32"))
        return replace(self, optimizer=optimizer, mixed_precision=mixed, lora_targets=tuple(targets),
                       upcast_non_quantized=upcast, quant=quant, autocast=autocast)

    @property
    def quantized(self) -> bool:
        return self.quant is not None or self.method == "qlora"


def lorakit_defaults(**changes) -> Setup:
    """The setup of a lorakit run with its defaults (what `vram-estimate MODEL` estimates): a 4-bit base keeps the
    compute dtype (qlora.upcast_to_fp32: auto), MLPs are tiled where the planner says it pays (train.tiled_mlp:
    auto). `Setup()` alone describes the usual PEFT/TRL stack the calibration rows were measured on."""
    return Setup(**{"upcast_non_quantized": "auto", "tiled_mlp": "auto", **changes})


@dataclass
class Term:
    key: str
    label: str
    bytes: float
    phase: str  # persistent | forward/backward | optimizer step | outside allocator | overhead | host
    note: str = ""


@dataclass
class Estimate:
    model: str
    setup: Setup
    params: int
    trainable: int
    tokens: int
    terms: list[Term] = field(default_factory=list)

    def term(self, key: str) -> float:
        return sum(t.bytes for t in self.terms if t.key == key)

    def phase(self, name: str) -> float:
        return sum(t.bytes for t in self.terms if t.phase == name)

    @property
    def peak_phase(self) -> str:
        return max(("forward/backward", "optimizer step", "generation"), key=self.phase)

    @property
    def allocated(self) -> float:
        """torch.cuda.max_memory_allocated() of a steady step (on each GPU)."""
        return self.phase("persistent") + max(self.phase("forward/backward"), self.phase("optimizer step"),
                                              self.phase("generation"))

    @property
    def reserved(self) -> float:
        """torch.cuda.max_memory_reserved(): the allocator's cache holds more than it hands out."""
        return self.allocated * K.allocator_slack

    @property
    def total(self) -> float:
        """What each GPU must have: reserved + paged optimizer states + the CUDA context (nvidia-smi's view)."""
        return self.reserved + self.phase("outside allocator") + self.phase("overhead")

    def total_on(self, gpu_gib: float | None) -> float:
        """`total` on a GPU of `gpu_gib`: a colocated vLLM engine takes at least its share of that GPU."""
        engine = self.term("vllm_engine")
        if not engine or gpu_gib is None:
            return self.total
        share = self.setup.vllm_gpu_share * gpu_gib * GIB
        if share <= engine:
            return self.total
        if self.setup.vllm_sleep:  # in the generation phase, alongside the persistent state only
            others = max(self.phase("forward/backward"), self.phase("optimizer step"))
            allocated = self.phase("persistent") + max(others, self.phase("generation") - engine + share)
            return allocated * K.allocator_slack + self.phase("outside allocator") + self.phase("overhead")
        return self.total + share - engine

    @property
    def host(self) -> float:
        """Pinned host RAM the run needs besides the model (activation offloading)."""
        return self.phase("host")

    def to_dict(self) -> dict[str, Any]:
        setup = asdict(self.setup)
        setup["lora_targets"] = list(self.setup.lora_targets)
        return {
            "model": self.model, "setup": setup, "params": self.params, "trainable_params": self.trainable,
            "tokens_per_step": self.tokens,
            "terms": [{"key": t.key, "label": t.label, "gib": round(t.bytes / GIB, 4), "phase": t.phase,
                       "note": t.note} for t in self.terms],
            "peak_phase": self.peak_phase,
            "allocated_gib": round(self.allocated / GIB, 3),
            "reserved_gib": round(self.reserved / GIB, 3),
            "total_gib": round(self.total / GIB, 3),
            "host_gib": round(self.host / GIB, 3),
            "per_gpu": self.setup.num_gpus > 1,
            "assumptions": assumptions(self.setup),
        }


def check_setup(setup: Setup) -> None:
    """Impossible values, named. Raises ValueError('field: problem')."""
    choices = {"method": METHODS, "dtype": tuple(DTYPE_BYTES), "optimizer": OPTIMIZERS, "attn": ATTENTION,
               "loss": LOSSES, "stage": STAGES, "device": ("cuda", "cpu"), "quant": QUANTS, "strategy": STRATEGIES}
    if setup.upcast_non_quantized not in (None, True, False, "all", "norms", "none", "auto"):
        raise ValueError(f"upcast_non_quantized: {setup.upcast_non_quantized!r} is not one of all, norms, none, auto")
    if setup.tiled_mlp not in (True, False, "auto"):
        raise ValueError(f"tiled_mlp: {setup.tiled_mlp!r} is not one of true, false, auto")
    for name, allowed in choices.items():
        value = getattr(setup, name)
        if value is not None and value not in allowed:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    for name in ("seq_len", "batch_size", "lora_r", "num_gpus", "grad_accumulation", "completion_len"):
        value = getattr(setup, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a whole number, at least 1 (got {value!r})")
    if not 0 <= setup.lora_dropout < 1:
        raise ValueError(f"lora_dropout: must be in [0, 1) (got {setup.lora_dropout})")
    targets = setup.lora_targets
    if isinstance(targets, str) and targets not in ("all-linear", "all"):
        unknown = [t for t in targets.split(",") if t.strip() not in LINEAR_NAMES]
        if unknown:
            raise ValueError(f"lora_targets: unknown module {unknown[0]!r}; use all-linear or some of "
                             f"{','.join(LINEAR_NAMES)}")
    training = setup.stage != "inference"
    if setup.quant in SERVED_QUANTS and training:
        raise ValueError(f"quant: {setup.quant} is a deploy format (lorakit quantize --format {setup.quant}); use "
                         "stage inference")
    if setup.quant is not None and training and setup.method != "qlora":
        raise ValueError(f"quant: a {setup.quant} base trains only LoRA adapters; use method qlora, or stage "
                         f"inference")
    if setup.optimizer_in_backward and setup.grad_accumulation > 1:
        raise ValueError("optimizer_in_backward: steps each parameter during backward, so it cannot accumulate "
                         "gradients (grad_accumulation must be 1)")
    if setup.optimizer_in_backward and setup.num_gpus > 1:
        raise ValueError("optimizer_in_backward: single-GPU only (gradients must be reduced before the step)")
    if setup.activation_offloading and not training:
        raise ValueError("activation_offloading: inference saves no activations for backward")
    if setup.stage == "grpo":
        if setup.generation not in GENERATION:
            raise ValueError(f"generation: {setup.generation!r} is not one of {', '.join(GENERATION)}")
        if setup.completion_len >= setup.seq_len:
            raise ValueError(f"completion_len: {setup.completion_len} leaves no room for a prompt in seq_len "
                             f"{setup.seq_len} (seq_len counts prompt + completion)")
        if not 0 < setup.vllm_gpu_share < 1:
            raise ValueError(f"vllm_gpu_share: must be between 0 and 1 (got {setup.vllm_gpu_share})")
        if setup.generation_batch is not None and setup.generation_batch < 1:
            raise ValueError(f"generation_batch: must be at least 1 (got {setup.generation_batch})")


def _grpo_generation_terms(shape: ModelShape, s: Setup, b: int, add) -> None:
    """What sampling a generation batch holds: its KV cache and one step's sampling scores (transformers), or a
    colocated vLLM engine's own weights and cache."""
    rows = s.generation_batch or s.batch_size * s.grad_accumulation
    kv = 2 * shape.layers * shape.kv_heads * shape.dim * b * rows * s.seq_len
    if s.generation == "vllm":
        engine = shape.total_params * 2 + kv  # vLLM loads its own 16-bit weights
        add("vllm_engine", "vLLM engine (its own 16-bit weights + KV cache)", engine,
            "generation" if s.vllm_sleep else "outside allocator",
            f"colocate mode reserves {s.vllm_gpu_share:.0%} of the GPU (vllm_gpu_memory_utilization) at least"
            + ("; sleep mode frees it during the training step" if s.vllm_sleep else ""))
        return
    add("generation_kv", "generation KV cache", kv, "generation",
        f"{rows} completions x {s.seq_len} tokens (prompt + completion), freed before the training forward")
    add("generation_scores", "generation sampling scores (one step)", rows * shape.vocab * 4 * 3, "generation",
        "fp32 logits, processed scores and probabilities of the last position")
    if s.grpo_reference:
        add("grpo_reference_pass", "reference forward (beta > 0; no grad, before the policy pass)", 0.0,
            "forward/backward", "transient, below the policy's peak")


def _quant_bytes(shape: ModelShape, s: Setup, params: int, tensors: int) -> float:
    """Bytes of `params` weights in `tensors` quantized matrices."""
    if s.quant == "w4a16":
        # two 4-bit weights per byte, one 16-bit scale per group of 128 inputs (Marlin keeps them so in vLLM)
        return params * 0.5 + params / W4A16_GROUP * 2
    if s.quant in ("w8a8", "fp8"):
        # one byte per weight, one fp32 scale per output channel (vLLM's scaled-mm layout); the activations'
        # per-token scales are transient
        return params * 1.0 + params / max(shape.hidden, 1) * 4
    if s.quant == "int8":
        # LLM.int8: int8 weights plus one fp32 scale per output row (~1 row per 4096 weights in these models)
        return params * 1.0 + params / max(shape.hidden, 1) * 4
    absmax = params / 64 * 1 + params / (64 * 256) * 4 if s.double_quant else params / 64 * 4
    # each quantized tensor also carries its 16-entry code (and the 256-entry code of its absmax + offset)
    return params * 0.5 + absmax + tensors * (64 + (1028 if s.double_quant else 0))


def _nf4_bytes(shape: ModelShape, double_quant: bool) -> float:
    s = Setup(double_quant=double_quant).resolved()
    return _quant_bytes(shape, s, shape.quantizable_params, _quantized_tensors(shape))


def _quantized_tensors(shape: ModelShape) -> int:
    return shape.layers * sum(shape.experts if shape.experts and shape.is_mlp(n) else 1 for n in shape.linear_shapes())


@dataclass(frozen=True)
class _Flow:
    """Bytes per element of the tensors of one decoder layer, in the order they are made."""

    b: int  # compute dtype
    autocast: bool
    quantized: bool  # the linears are bitsandbytes 4/8-bit layers
    residual: int  # hidden states between layers (fp32 after prepare_model_for_kbit_training)
    norm_out: int  # what a norm returns (LayerNorm under autocast: fp32)
    attn: int  # q/k/v as attention sees them (after RoPE), its output
    mlp: int  # gate/up outputs, the SiLU output and their product
    adapter: int  # LoRA weights (PEFT keeps them fp32 under mixed precision)
    head_weight: int
    logits: int
    embed: int
    norm_weight: int


def _upcast(s: Setup) -> str:
    """Which non-quantized weights train in fp32: all (PEFT's prepare_model_for_kbit_training), norms (TRL < 0.20's
    peft_module_casting_to_bf16 cast embeddings and head back to 16-bit after it), or none."""
    value = s.upcast_non_quantized
    if s.stage == "inference" or value in (None, False, "none"):
        return "none"
    return "norms" if value == "norms" else "all"


def _flow(shape: ModelShape, s: Setup) -> _Flow:
    b = DTYPE_BYTES[s.dtype]
    training = s.stage != "inference"
    autocast = bool(s.autocast) and training
    quantized = s.quantized
    fp32_master = s.method == "full" and s.mixed_precision and training
    upcast = _upcast(s)
    embed = 4 if (b == 4 or fp32_master or upcast == "all") else b
    norm_weight = 4 if (b == 4 or fp32_master or upcast != "none") else b
    # Dtypes follow type promotion through the layer: a 4-bit layer returns its input's dtype, a 16-bit linear the
    # autocast dtype (or its weight's); the residual stream is the widest of the embeddings and what is added to it.
    residual = embed
    for _ in range(3):  # reaches its fixed point in two passes
        norm_out = 4 if (shape.layer_norm and autocast) else max(norm_weight, residual)
        qkv = norm_out if quantized else (b if autocast else norm_out)
        rotary = not shape.positions and not shape.encoder and not shape.alibi
        attn_in = max(qkv, embed) if rotary else qkv  # q * cos, cos in the embeddings' dtype
        attn = b if autocast else attn_in
        o_out = attn if quantized else (b if autocast else attn)
        mlp = norm_out if quantized else (b if autocast else norm_out)
        down_out = mlp if quantized else (b if autocast else mlp)
        residual = max(embed, o_out, down_out)
    adapter = 4 if s.mixed_precision else b
    head_weight = b if s.quantize_head else embed
    logits = b if autocast else head_weight
    return _Flow(b, autocast, quantized, residual, norm_out, attn, mlp, adapter, head_weight, logits, embed,
                 norm_weight)


def _activations_per_token(shape: ModelShape, s: Setup, seq: int) -> float:
    """Bytes autograd saves for one layer, per token (no checkpointing)."""
    return sum(_layer_activations(shape, s, seq))


def _layer_activations(shape: ModelShape, s: Setup, seq: int) -> tuple[float, float]:
    """Bytes autograd saves for one layer per token: (everything but the MLP, the MLP). The MLP's part is its
    intermediates, what its linears keep of their inputs (the normalized hidden states included) and its LoRA
    matrices' rank-r outputs: what a sequence-tiled MLP holds for one tile only."""
    f = _flow(shape, s)
    b = f.b
    h, d, i = shape.hidden, shape.dim, shape.intermediate
    nh, kv = shape.heads, shape.kv_heads
    moe = shape.active_experts if shape.experts else 1
    in_sizes = {n: fan_in for n, (fan_in, _) in shape.linear_shapes().items()}
    full = s.method == "full"
    lora = set() if full else set(s.lora_targets) & set(in_sizes)
    eager = s.attn == "eager" or shape.encoder

    total = mlp_total = 0.0
    # Norms: RMSNorm saves an fp32 copy of its input and 1/rms (and, when its weight trains, the normalized input);
    # LayerNorm its input (fp32 under autocast) and mean/rstd.
    norm_in = 4 if (not shape.layer_norm or f.autocast) else f.residual
    total += shape.norms_per_layer * (norm_in * h + (8 if shape.layer_norm else 4))  # + 1/rms, or mean and rstd
    if full and not shape.layer_norm:
        total += shape.norms_per_layer * f.residual * h
    if shape.qk_norm:
        total += 4 * (nh + kv) * d
    # Attention.
    if eager:
        total += f.attn * 3 * nh * d  # q, and k and v repeated to all heads
        total += nh * seq * (4 + (f.attn if f.attn != 4 else 0))  # fp32 softmax probabilities, their 16-bit copy
        if shape.dropout:
            total += nh * seq * (1 + f.attn)  # attention dropout mask and output
    else:
        total += f.attn * (2 * nh * d + 2 * kv * d) + 4 * nh  # q, k, v, output, log-sum-exp
    # MLP (per routed expert for MoE).
    mlp_total += moe * (3 if shape.gated_mlp else 1) * f.mlp * i  # gate output (SiLU input), SiLU output, up output
    if shape.dropout:
        total += 2 * h  # hidden dropout masks after attention and MLP (bool on CUDA)

    # Inputs the linears keep for their weight gradients, by the tensor they read.
    groups = {"norm1": ("q", "k", "v"), "attn_out": ("o",), "norm2": ("gate", "up"), "mlp_mid": ("down",)}
    if not shape.gated_mlp:
        groups["norm2"] = ("up",)
    dtype = {"norm1": f.norm_out, "attn_out": f.attn, "norm2": f.norm_out, "mlp_mid": f.mlp}
    # MoE experts read gathered copies of their tokens' inputs
    width = {"norm1": h, "attn_out": nh * d, "norm2": h * moe, "mlp_mid": i * moe}
    # SDPA/flash already keep their output in (batch, seq, heads, dim) memory, which is o_proj's input
    already_saved = {"attn_out": not eager}
    mask_b = lambda x: 1 if s.device == "cuda" else x  # noqa: E731  (CUDA dropout keeps a bool mask, CPU one like x)
    for group, members in groups.items():
        dx = dtype[group]
        shared, own, rank_outputs = False, 0.0, 0.0
        for name in members:
            if full:  # the weight trains: its linear keeps the input it computed with
                kept = b if f.autocast else dx
                shared, own = (True, own) if kept == dx else (shared, own + kept)
            elif f.quantized and s.bnb_saves_inputs:  # bitsandbytes < 0.43.2: A kept in the compute dtype
                shared, own = (True, own) if dx == b else (shared, own + b)
            if name in lora:
                # PEFT casts the input to the adapter dtype (its 4-bit layers skip that under CUDA autocast),
                # drops it out, and lora_A keeps what it multiplies: the autocast copy or the (dropped) input
                x_a = dx if (f.quantized and f.autocast) else f.adapter
                kept = b if f.autocast else x_a
                if s.lora_dropout:
                    own += kept + mask_b(x_a)
                elif x_a == dx and kept == dx:
                    shared = True
                else:
                    own += kept
                # lora_A's rank-r output, kept for lora_B's weight gradient
                rank_outputs += s.lora_r * kept * (moe if shape.is_mlp(name) else 1)
        kept_inputs = width[group] * ((dx if shared and not already_saved.get(group) else 0) + own)
        if group in ("norm2", "mlp_mid"):
            mlp_total += kept_inputs + rank_outputs
        else:
            total += kept_inputs + rank_outputs
    return total, mlp_total


def _bnb_inputs_per_token(shape: ModelShape, s: Setup) -> float:
    """Bytes per token per layer that bitsandbytes < 0.43.2 keeps on its 4-bit layers' ctx (the input in the compute
    dtype: shared by the layers reading one tensor when no cast is needed, one copy per layer when it is)."""
    f = _flow(shape, s)
    moe = shape.active_experts if shape.experts else 1
    groups = {("q", "k", "v"): (f.norm_out, shape.hidden), ("o",): (f.attn, shape.heads * shape.dim),
              ("gate", "up") if shape.gated_mlp else ("up",): (f.norm_out, shape.hidden * moe),
              ("down",): (f.mlp, shape.intermediate * moe)}
    return sum(width * f.b * (1 if dx == f.b else len(members)) for members, (dx, width) in groups.items())


def _lora_casts_per_layer(shape: ModelShape, s: Setup) -> float:
    """Autocast's 16-bit copies of one layer's fp32 LoRA weights (kept for backward: the weights require grad)."""
    f = _flow(shape, s)
    if s.method == "full" or not f.autocast or f.adapter == f.b or s.stage == "inference":
        return 0.0
    return shape.lora_params(s.lora_r, s.lora_targets) / shape.layers * f.b


def _logits_per_token(shape: ModelShape, s: Setup) -> float:
    if shape.encoder:
        return 0.0
    f = _flow(shape, s)
    if s.loss == "plain":
        if not s.logits_fp32:
            return shape.vocab * 4.0 * f.b
        # the logits, their fp32 copy (none when already fp32), the fp32 log-softmax and two fp32 gradients
        return shape.vocab * ((f.logits if f.logits != 4 else 0) + K.plain_ce_bytes)
    if s.loss == "chunked":
        return shape.vocab * K.chunked_factor * f.b  # 16-bit logits, their gradient and fp32 temporaries of one chunk
    return 0.0


def _largest_matrix(shape: ModelShape) -> int:
    return max(fan_in * fan_out for fan_in, fan_out in shape.linear_shapes().values())


def assumptions(setup: Setup) -> dict[str, str]:
    """The library behaviour the numbers rest on, so a user can tell when their stack differs."""
    s = setup.resolved()
    notes = {
        "torch": f"CUDA context {s.cuda_context_gib:g} GiB (torch >= 2 loads kernels lazily); caching allocator "
                 f"reserves {K.allocator_slack:.2f} x the allocated peak",
        "transformers": "causal-LM loss upcasts logits to fp32 (plain loss); RMSNorm computes in fp32",
    }
    if s.quant in SERVED_QUANTS:
        notes["vllm"] = (f"compressed-tensors {s.quant}: " + ("4-bit weights, a 16-bit scale per 128 (Marlin)"
                         if s.quant == "w4a16" else "8-bit weights, fp32 per-channel scales (CUTLASS scaled-mm), "
                         "activations quantized per token on the fly") + "; embeddings and head 16-bit")
    elif s.quantized:
        notes["bitsandbytes"] = ("< 0.43.2: each 4-bit layer keeps its input for backward" if s.bnb_saves_inputs
                                 else ">= 0.43.2: 4-bit layers keep no input for backward; one matrix dequantized "
                                      "to 16-bit at a time")
        if s.stage != "inference":
            notes["peft"] = {
                "all": "prepare_model_for_kbit_training: embeddings, norms and head in fp32 (fp32 residual stream; "
                       "4-bit layers return fp32)",
                "norms": "norms in fp32, embeddings and head 16-bit (TRL < 0.20's peft_module_casting_to_bf16)",
                "none": "no fp32 upcast: embeddings, norms and head in the compute dtype (RMSNorm statistics and the "
                        "loss in fp32)"}[_upcast(s)]
    if s.stage != "inference" and s.method != "full":
        notes["peft_adapters"] = "LoRA weights fp32" if s.mixed_precision else f"LoRA weights {s.dtype}"
    if s.activation_offloading:
        notes["trl"] = (f"activation_offloading (trl.models.get_act_offloading_ctx_manager): {OFFLOAD_KEPT_LAYERS} "
                        "layers' saved tensors on the GPU, the rest in pinned host memory; the LM head's stay")
    if s.num_gpus > 1:
        notes["distributed"] = (f"{s.strategy} on {s.num_gpus} GPUs, one micro-batch per GPU; "
                                "NCCL buffers not counted")
    notes["installed"] = installed_versions()
    return notes


def installed_versions() -> str:
    """Versions of the stack on this machine (read from package metadata: nothing is imported)."""
    from importlib import metadata

    found = []
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found) or "none of torch/transformers/peft/trl/bitsandbytes"


def _tiles_mlp(shape: ModelShape, s: Setup) -> bool:
    """Whether the MLPs really run in tiles: asked for, a dense decoder, and rows longer than one tile."""
    return (s.tiled_mlp is True and s.stage != "inference" and not shape.experts and not shape.encoder
            and s.seq_len > mlp_tile_tokens(shape.hidden))


def _tiled_layer(shape: ModelShape, s: Setup, sequences: int) -> tuple[float, float]:
    """A tiled layer: (bytes per token kept for the whole row, bytes of one tile's MLP working set). The row keeps
    everything but the MLP, plus the tiles' inputs (the normalized hidden states, which the tiles' checkpoints hold);
    one tile of every row holds the MLP's part while it runs or is recomputed."""
    rest, mlp = _layer_activations(shape, s, s.seq_len)
    f = _flow(shape, s)
    return rest + shape.hidden * f.norm_out, sequences * mlp_tile_tokens(shape.hidden) * mlp


def tiling_pays(shape: ModelShape, setup: Setup, memory_bytes: float | None = None) -> tuple[bool, str]:
    """lorakit's rule for `train.tiled_mlp: auto`, and why. Tiles cost one more forward of each MLP, so they are only
    worth it for memory: with gradient checkpointing on and rows longer than one tile, tile when the GPU's memory is
    known (`memory_bytes`) and the run does not fit it untiled; when it is not known (the CPU), when the layer being
    recomputed is the largest activation term (larger than the layer inputs kept and the loss), i.e. what a longer
    sequence runs into first."""
    s = replace(setup, tiled_mlp=False).resolved()
    tile = mlp_tile_tokens(shape.hidden)
    if s.stage == "inference":
        return False, "inference keeps no activations"
    if shape.experts or shape.encoder:
        return False, "no dense decoder MLP to tile"
    if not s.grad_checkpointing:
        return False, ("no gradient checkpointing: every layer keeps its activations, and tiles would add a recompute "
                       "(train.tiled_mlp: true trades it)")
    if s.seq_len <= tile:
        return False, f"rows of up to {s.seq_len:,} tokens fit in one tile of {tile:,}"
    est = estimate(shape, s)
    if memory_bytes is not None:
        if est.total <= memory_bytes:
            return False, (f"fits without tiles ({est.total / GIB:.1f} of {memory_bytes / GIB:.1f} GiB at "
                           f"{s.seq_len:,} tokens): tiles would only add a recompute")
        return True, (f"{est.total / GIB:.1f} GiB untiled does not fit {memory_bytes / GIB:.1f} GiB at {s.seq_len:,} "
                      "tokens")
    one = est.term("activations_recompute")
    if one == 0:  # the estimate keeps the larger of the loss and the recomputed layer, which never coexist
        return False, f"the loss is the largest activation term at {s.seq_len:,} tokens, not one recomputed layer"
    others = {"the layer inputs kept": est.term("activations_checkpoints"), "the loss": est.term("logits")}
    largest = max(others, key=lambda key: others[key])
    if one >= others[largest]:
        return True, f"one recomputed layer is the largest activation term at {s.seq_len:,} tokens ({one / GIB:.2f} GiB)"
    return False, (f"{largest} ({others[largest] / GIB:.2f} GiB) are larger than one recomputed layer "
                   f"({one / GIB:.2f} GiB) at {s.seq_len:,} tokens")


def estimate(shape: ModelShape, setup: Setup) -> Estimate:
    check_setup(setup)
    if setup.tiled_mlp == "auto":
        setup = replace(setup, tiled_mlp=tiling_pays(shape, setup)[0])
    s = setup.resolved()
    f = _flow(shape, s)
    b = f.b
    training = s.stage != "inference"
    sh = sharding(s.strategy, s.num_gpus)
    sequences = s.batch_size * (2 if s.stage.startswith("dpo") else 1)
    tokens = sequences * s.seq_len
    total_params = shape.total_params
    head_quantized = s.quantize_head and s.quantized and not shape.tied and not shape.encoder
    quantized = (shape.quantizable_params + (shape.head_params if head_quantized else 0)) if s.quantized else 0
    lora_params = shape.lora_params(s.lora_r, s.lora_targets) if s.method != "full" and training else 0
    trainable = total_params if s.method == "full" else lora_params
    if not training:
        trainable = 0
    master_b = 4 if s.mixed_precision else b
    est = Estimate(shape.name, s, total_params, trainable, tokens)
    add = lambda *args, **kw: est.terms.append(Term(*args, **kw))  # noqa: E731
    split = f" / {sh.weights} GPUs" if sh.weights > 1 else ""

    # Weights.
    if s.quantized:
        qbytes = _quant_bytes(shape, s, quantized, _quantized_tensors(shape) + (1 if head_quantized else 0))
        add("base_weights", f"base weights ({s.quant.upper()} linears + constants)", qbytes / sh.weights, "persistent",
            f"{quantized / 1e9:.2f}B params at {qbytes / quantized:.3f} bytes/param"
            f"{' (double quantization)' if s.double_quant and s.quant in ('nf4', 'fp4') else ''}{split}")
        small = shape.layers * shape.layer_other_params() + shape.final_norm_params  # norms, biases, routers
        large = total_params - quantized - small  # embeddings, head (unless quantized), frozen towers
        other = small * f.norm_weight + large * f.embed
        upcast = _upcast(s)
        add("other_weights", "embeddings, head, norms", other / sh.weights, "persistent",
            f"{(total_params - quantized) / 1e9:.2f}B params in "
            + {"all": "fp32 (prepared for k-bit training)", "norms": f"{s.dtype}, norms fp32",
               "none": s.dtype}[upcast] + split)
        layer_bytes = qbytes / max(shape.layers, 1)
    else:
        zero_master = s.method == "full" and training and s.mixed_precision and sh.strategy in ("zero2", "zero3")
        weight_b = b if zero_master else (master_b if s.method == "full" and training else b)
        add("base_weights", "base weights", total_params * weight_b / sh.weights, "persistent",
            f"{total_params / 1e9:.2f}B params x {weight_b} bytes{split}")
        if zero_master:
            add("master_weights", "fp32 master weights (partitioned)", total_params * 4 / sh.optimizer,
                "persistent", f"DeepSpeed keeps them with the optimizer states, 1/{sh.optimizer} per GPU")
        layer_bytes = (shape.layer_linear_params() + shape.layer_other_params()) * b
    if sh.gathered_layers:
        gathered = sh.gathered_layers * layer_bytes * (1 - 1 / sh.weights)
        add("gathered_layers", f"gathered layers ({sh.gathered_layers}, all-gather + prefetch)", gathered,
            "forward/backward", f"{sh.strategy} rebuilds each layer's full weights while it runs")
        if sh.root_gathered:
            root = (shape.embed_params + shape.head_params + shape.final_norm_params) * (
                f.head_weight if s.quantized else (master_b if s.method == "full" and training else b))
            add("gathered_root", "gathered embeddings and head (FSDP root unit)", root * (1 - 1 / sh.weights),
                "forward/backward", "unsharded from the start of forward to the end of backward")
    if lora_params:
        copies = 2 if s.stage == "dpo" or (s.stage == "grpo" and s.grpo_reference) else 1
        add("lora_weights", "LoRA adapters" + (" (+ frozen reference copy)" if copies == 2 else ""),
            lora_params * master_b * copies / sh.weights, "persistent",
            f"r={s.lora_r} on {','.join(s.lora_targets)}: {lora_params / 1e6:.1f}M params{split}")
    if training and s.method == "full" and s.stage == "dpo":
        add("reference_model", "reference model (full copy)", total_params * b / sh.weights, "persistent")

    if training:
        grad_note = f"{master_b} bytes per trainable param" + (f" / {sh.gradients} GPUs" if sh.gradients > 1 else "")
        if s.optimizer_in_backward:
            largest = max(_largest_matrix(shape), shape.embed_params if s.method == "full" else 0)
            if s.method != "full":
                largest = max(s.lora_r * max(a + c for a, c in shape.linear_shapes().values()), 1)
            add("gradients", "gradients (one parameter at a time; optimizer in backward)", 2 * largest * master_b,
                "forward/backward", "each parameter is stepped and its gradient freed as soon as it is computed")
        else:
            if s.grad_accumulation > 1:
                add("gradients", "gradients (accumulating)", trainable * master_b / sh.gradients, "forward/backward",
                    grad_note)
            add("gradients_step", "gradients (at the optimizer step)", trainable * master_b / sh.gradients,
                "optimizer step", grad_note)
        if sh.gradient_buckets and trainable:
            add("ddp_buckets", "DDP gradient buckets", trainable * master_b, "persistent",
                "a second copy of the gradients for the all-reduce (gradient_as_bucket_view=False)")
        if sh.deepspeed_bucket and trainable:
            add("ds_buckets", "DeepSpeed reduce bucket", min(trainable, DEEPSPEED_BUCKET) * b, "forward/backward",
                f"reduce_bucket_size up to {DEEPSPEED_BUCKET:.0e} elements")
        states = {"adamw": 2 * master_b, "adamw-8bit": 2.0, "paged-adamw": 8.0, "paged-adamw-8bit": 2.0,
                  "sgd": 0.0, "adafactor": 0.0}[s.optimizer]
        phase = "outside allocator" if s.optimizer.startswith("paged") else "persistent"
        add("optimizer_states", f"optimizer states ({s.optimizer})", trainable * states / sh.optimizer, phase,
            "paged: CUDA unified memory, evicted to host RAM under pressure" if phase != "persistent" else
            f"{states:g} bytes per trainable param" + (f" / {sh.optimizer} GPUs" if sh.optimizer > 1 else ""))
        temp = master_b if s.optimizer == "adamw" and s.foreach_optimizer else 0.0
        if temp and not s.optimizer_in_backward:
            add("optimizer_step", "optimizer-step temporaries", trainable * temp / sh.optimizer, "optimizer step",
                "foreach AdamW keeps one parameter-sized temporary")
        if s.method == "full" and s.mixed_precision and f.autocast:
            add("autocast_copies", "16-bit weight copies (autocast cache)",
                (shape.quantizable_params + (0 if shape.tied else shape.head_params)) * b / sh.weights,
                "forward/backward", "mixed precision casts each fp32 weight once per step")

        per_layer = _activations_per_token(shape, s, s.seq_len)
        tile_bytes, per_layer_note = 0.0, f"{per_layer / 1024:.1f} KiB per token"
        if _tiles_mlp(shape, s):
            per_layer, tile_bytes = _tiled_layer(shape, s, sequences)
            per_layer_note = (f"{per_layer / 1024:.1f} KiB per token + one MLP tile of "
                              f"{mlp_tile_tokens(shape.hidden)} tokens ({tile_bytes / GIB:.2f} GiB)")
        casts = _lora_casts_per_layer(shape, s) * shape.layers
        if casts:
            add("lora_casts", "16-bit copies of the LoRA weights (autocast)", casts, "forward/backward",
                "autocast caches one cast of each fp32 weight that requires grad")
        if s.quantized and s.bnb_saves_inputs and s.bnb_inputs_outlive_step:
            kept = shape.layers * tokens * _bnb_inputs_per_token(shape, s) + (
                tokens * shape.hidden * b if head_quantized else 0)
            add("bnb_previous_inputs", "previous micro-batch's 4-bit layer inputs (bitsandbytes < 0.43.2)", kept,
                "forward/backward", "kept on ctx until the last loss is released (the training loop holds it)")
        offload = s.activation_offloading
        kept_layers = min(shape.layers, OFFLOAD_KEPT_LAYERS)
        if s.grad_checkpointing:
            checkpoints = shape.layers * tokens * shape.hidden * f.residual
            if offload:
                on_gpu = kept_layers * tokens * shape.hidden * f.residual
                add("activations_checkpoints", "activations: layer inputs kept (checkpointing, offloaded)",
                    on_gpu, "forward/backward", f"{kept_layers} of {shape.layers} on the GPU")
                add("offloaded_activations", "offloaded layer inputs (pinned host RAM)", checkpoints - on_gpu,
                    "host", "not GPU memory")
            else:
                add("activations_checkpoints", "activations: layer inputs kept (checkpointing)", checkpoints,
                    "forward/backward")
            # one recomputed layer + the fp32 gradients of the hidden states around it
            layer_peak = tokens * per_layer + tile_bytes + K.recompute_grads * tokens * shape.hidden * 4
            add("activations_recompute", "activations: one layer recomputed" + (" (tiled MLP)" if tile_bytes else ""),
                layer_peak, "forward/backward", per_layer_note)
        else:
            all_layers = shape.layers * tokens * per_layer
            if offload:
                on_gpu = kept_layers * tokens * per_layer
                add("activations", "activations (offloaded; layers in flight)", on_gpu + tile_bytes,
                    "forward/backward", f"{per_layer_note} per layer; {kept_layers} of {shape.layers} on the GPU")
                add("offloaded_activations", "offloaded activations (pinned host RAM)", all_layers - on_gpu, "host",
                    "not GPU memory")
            else:
                add("activations", "activations (all layers)", all_layers + tile_bytes, "forward/backward",
                    f"{per_layer_note} per layer")
        # GRPO scores only the completion tokens of each row through the LM head
        head_tokens = sequences * s.completion_len if s.stage == "grpo" else tokens
        logits = head_tokens * _logits_per_token(shape, s)
        head_used = shape.head_params if not shape.tied else shape.vocab * shape.hidden
        head_cast = f.autocast and f.head_weight == 4 and b != 4 and not shape.encoder and s.method != "full"
        if s.loss == "fused" and not shape.encoder:
            logits = tokens * shape.hidden * 4 + FUSED_BUFFER  # fp32 grad of the last hidden state + tile buffers
        if head_cast and s.loss != "plain":
            logits += head_used * b  # each tile casts the fp32 head to 16-bit; the copy lives while the loss runs
        add("logits", f"logits and loss ({s.loss})", logits, "forward/backward",
            {"plain": "~14 bytes per token per vocab entry", "chunked": "16-bit logits + their gradient",
             "fused": "vocabulary processed in tiles; no logits kept"}[s.loss])
        if head_cast and s.loss == "plain":
            add("head_cast", "16-bit copy of the fp32 head (autocast, kept for backward)", head_used * b,
                "forward/backward", "prepare_model_for_kbit_training made the head fp32")
        if s.grad_checkpointing:
            # The loss and a recomputed layer never coexist: count the larger.
            recompute = est.term("activations_recompute")
            if logits >= recompute:
                est.terms = [t for t in est.terms if t.key != "activations_recompute"]
            else:
                est.terms = [t for t in est.terms if t.key != "logits"]
                add("logits_note", "logits and loss (smaller than one layer; not concurrent)", 0.0,
                    "forward/backward", f"{logits / GIB:.3f} GiB")
        if s.stage == "dpo":
            ref = tokens * (shape.hidden * b * 4 + shape.vocab * (b + 4))
            add("reference_pass", "reference forward (no grad; before the policy pass)", 0.0, "forward/backward",
                f"{ref / GIB:.2f} GiB transient, below the policy's peak")
        if s.stage == "grpo":
            _grpo_generation_terms(shape, s, b, add)
    else:
        kv = 2 * shape.layers * shape.kv_heads * shape.dim * b * tokens
        add("kv_cache", "KV cache", kv, "persistent", f"{tokens} tokens")
        add("prefill", "prefill activations (one layer, no grad)",
            tokens * (shape.hidden * 4 * b + shape.intermediate * 3 * b) + s.batch_size * shape.vocab * 4,
            "forward/backward")
    if s.quant in SERVED_QUANTS:
        if s.quant != "w4a16":  # W4A16 dequantizes inside the Marlin kernel: no buffer
            add("act_quant", "quantized activations", tokens * max(shape.hidden, shape.intermediate) * 1.0,
                "forward/backward", "the input of the widest layer, 1 byte per value with its per-token scales")
    elif s.quantized:
        largest = max(_largest_matrix(shape), shape.head_params if head_quantized else 0)
        absmax = largest / 64 * 4 if s.double_quant and s.quant != "int8" else 0
        add("dequant", "dequantization buffer", largest * b + absmax, "forward/backward",
            "one matrix in 16-bit while it runs" + (" (+ its fp32 absmax)" if absmax else ""))
    add("cuda_context", "CUDA context and kernels", s.cuda_context_gib * GIB, "overhead", "invisible to torch")
    return est
