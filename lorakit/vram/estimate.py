"""The GPU-memory estimate: every term that makes up a training (or inference) step's peak, in bytes.

Pure arithmetic over a ModelShape and a Setup. The model of each term, and why:

- Peak = persistent state + the larger of the forward/backward phase and the optimizer-step phase (the
  optimizer's temporaries exist only after activations are freed, so they do not add to them).
- Activations are the tensors autograd saves for backward, counted per token per layer the way transformers'
  Llama-style layers save them (RMSNorm keeps an fp32 copy of its input; SDPA/flash keep q, k, v, the output and
  a log-sum-exp; eager attention also keeps the s x s probabilities; LoRA keeps its own copy of each input it
  casts or drops out). Gradient checkpointing keeps one hidden state per layer plus one layer recomputed at a time.
- Plain cross-entropy keeps ~16 bytes per token per vocabulary entry at its backward peak (logits, an fp32
  log-softmax, and two fp32 gradients); a chunked loss keeps the 16-bit logits and their gradient; a fused
  linear+loss keeps one chunk.
- QLoRA stores the decoder's linear weights as 4-bit NF4 (0.5 byte) plus absmax constants (fp32 per 64 weights,
  or 8-bit per 64 + fp32 per 256 blocks with double quantization); embeddings, the head and norms stay 16-bit, or
  fp32 after PEFT's prepare_model_for_kbit_training (which also makes the residual stream fp32).
- Paged bitsandbytes optimizer states live in CUDA unified memory, outside PyTorch's allocator: they count
  toward the GPU total (they spill to host RAM under pressure, slowly) but not toward torch's allocated peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lorakit.vram.shapes import LINEAR_NAMES, ModelShape

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "adafactor")
ATTENTION = ("eager", "sdpa", "flash")
LOSSES = ("plain", "chunked", "fused")
STAGES = ("sft", "dpo", "dpo-precomputed", "inference")
FUSED_BUFFER = 64 * 1024**2
ALLOCATOR_SLACK = 1.10  # reserved / allocated for steady training steps (measured 1.05-1.3)


@dataclass(frozen=True)
class Setup:
    """Everything about a run that changes its memory, with lorakit's defaults for a 24 GB GPU."""

    method: str = "qlora"
    dtype: str = "bf16"
    mixed_precision: bool | None = None  # fp32 master weights/adapters under autocast; None: PEFT's (fp32 adapters)
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
    upcast_non_quantized: bool | None = None  # None: True for QLoRA (PEFT prepare_model_for_kbit_training)
    device: str = "cuda"
    grad_accumulation: int = 1  # > 1: gradients of earlier micro-batches coexist with activations
    logits_fp32: bool = True  # transformers' causal-LM loss upcasts logits to fp32
    bnb_saves_inputs: bool = False  # bitsandbytes < 0.44 kept every 4-bit linear's input for backward
    foreach_optimizer: bool = True  # torch's multi-tensor AdamW; per-parameter loops (transformers' old AdamW) keep no temporary
    cuda_context_gib: float = 0.5  # torch >= 2 with lazy kernel loading; older stacks loaded ~1.3 GiB of kernels

    def resolved(self) -> "Setup":
        optimizer = self.optimizer or ("paged-adamw-8bit" if self.method == "qlora" else "adamw")
        mixed = self.mixed_precision if self.mixed_precision is not None else self.method != "full"
        targets = self.lora_targets
        if isinstance(targets, str):
            targets = LINEAR_NAMES if targets in ("all-linear", "all") else tuple(t.strip() for t in targets.split(","))
        upcast = self.upcast_non_quantized if self.upcast_non_quantized is not None else self.method == "qlora"
        return replace(self, optimizer=optimizer, mixed_precision=mixed, lora_targets=tuple(targets),
                       upcast_non_quantized=upcast)


@dataclass
class Term:
    key: str
    label: str
    bytes: float
    phase: str  # persistent | forward/backward | optimizer step | outside allocator | overhead
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
        return "optimizer step" if self.phase("optimizer step") > self.phase("forward/backward") else "forward/backward"

    @property
    def allocated(self) -> float:
        """torch.cuda.max_memory_allocated() of a steady step."""
        return self.phase("persistent") + max(self.phase("forward/backward"), self.phase("optimizer step"))

    @property
    def reserved(self) -> float:
        """torch.cuda.max_memory_reserved(): the allocator's cache holds more than it hands out."""
        return self.allocated * ALLOCATOR_SLACK

    @property
    def total(self) -> float:
        """What the GPU must have: reserved + paged optimizer states + the CUDA context (nvidia-smi's view)."""
        return self.reserved + self.phase("outside allocator") + self.phase("overhead")

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
        }


def check_setup(setup: Setup) -> None:
    """Impossible values, named. Raises ValueError('field: problem')."""
    choices = {"method": METHODS, "dtype": tuple(DTYPE_BYTES), "optimizer": OPTIMIZERS, "attn": ATTENTION,
               "loss": LOSSES, "stage": STAGES, "device": ("cuda", "cpu")}
    for name, allowed in choices.items():
        value = getattr(setup, name)
        if value is not None and value not in allowed:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    for name in ("seq_len", "batch_size", "lora_r"):
        if getattr(setup, name) < 1:
            raise ValueError(f"{name}: must be at least 1 (got {getattr(setup, name)})")
    if not 0 <= setup.lora_dropout < 1:
        raise ValueError(f"lora_dropout: must be in [0, 1) (got {setup.lora_dropout})")
    targets = setup.lora_targets
    if isinstance(targets, str) and targets not in ("all-linear", "all"):
        unknown = [t for t in targets.split(",") if t.strip() not in LINEAR_NAMES]
        if unknown:
            raise ValueError(f"lora_targets: unknown module {unknown[0]!r}; use all-linear or some of "
                             f"{','.join(LINEAR_NAMES)}")


def _nf4_bytes(shape: ModelShape, double_quant: bool) -> float:
    params = shape.quantizable_params
    absmax = params / 64 * 1 + params / (64 * 256) * 4 if double_quant else params / 64 * 4
    # each quantized tensor also carries its 16-entry NF4 code (and the 256-entry code of its absmax + offset)
    tensors = shape.layers * sum(shape.experts if shape.experts and shape.is_mlp(n) else 1
                                 for n in shape.linear_shapes())
    return params * 0.5 + absmax + tensors * (64 + (1028 if double_quant else 0))


def _activations_per_token(shape: ModelShape, s: Setup, seq: int) -> float:
    """Bytes autograd saves for one layer, per token (no checkpointing)."""
    b = DTYPE_BYTES[s.dtype]
    autocast = s.mixed_precision and s.device == "cuda"
    adapter_b = 4 if s.mixed_precision else b
    residual_b = 4 if (s.upcast_non_quantized or (s.method == "full" and s.mixed_precision)) else b
    h, d, i = shape.hidden, shape.dim, shape.intermediate
    nh, kv = shape.heads, shape.kv_heads
    moe = shape.active_experts if shape.experts else 1
    in_sizes = {n: fan_in for n, (fan_in, _) in shape.linear_shapes().items()}
    trainable_linears = set(LINEAR_NAMES) if s.method == "full" else set()
    lora = set() if s.method == "full" else set(s.lora_targets) & set(in_sizes)

    total = 0.0
    # Norms: RMSNorm saves an fp32 copy of its input and 1/rms; LayerNorm its input and mean/rstd.
    norm_in = 4 if (not shape.layer_norm or autocast) else residual_b
    total += shape.norms_per_layer * (norm_in * h + 8)
    if shape.qk_norm:
        total += 4 * (nh + kv) * d
    # Attention.
    if s.attn == "eager" or shape.encoder:
        total += b * 3 * nh * d  # q, and k and v repeated to all heads
        total += nh * seq * (4 + (b if b != 4 else 0))  # fp32 softmax probabilities, their 16-bit copy
        if shape.dropout:
            total += nh * seq * (1 + b)  # attention dropout mask and output
    else:
        total += b * (2 * nh * d + 2 * kv * d) + 4 * nh  # q, k, v, output, log-sum-exp
    # MLP (per routed expert for MoE).
    if shape.gated_mlp:
        total += moe * 3 * b * i  # gate output (for SiLU), SiLU output and up output (for the product)
    else:
        total += moe * b * i  # fc1 output (for GELU)
    if shape.dropout:
        total += 2 * h  # hidden dropout masks after attention and MLP (bool on CUDA)
    # Inputs the linears need for their weight gradients: shared by all consumers of one tensor.
    needs = trainable_linears | (lora if not autocast and adapter_b == b and not s.lora_dropout else set())
    groups = {"norm1": ("q", "k", "v"), "attn_out": ("o",), "norm2": ("gate", "up"), "mlp_mid": ("down",)}
    eager = s.attn == "eager" or shape.encoder
    # SDPA/flash return their output in (batch, seq, heads, dim) memory, so o_proj's input is the saved output
    width = {"norm1": (residual_b if not shape.layer_norm else b) * h, "attn_out": b * nh * d if eager else 0,
             "norm2": (residual_b if not shape.layer_norm else b) * h, "mlp_mid": b * i * moe}
    if not shape.gated_mlp:
        groups["norm2"] = ("up",)
        width["mlp_mid"] = b * i * moe  # GELU output
    for group, members in groups.items():
        if needs & set(members):
            total += width[group]
    # LoRA: each adapted module keeps its own copy of its input when it casts it (fp32 adapters, or autocast back
    # to 16-bit) or drops it out, plus its rank-r intermediate.
    mask_b = 1 if s.device == "cuda" else adapter_b  # CUDA dropout keeps a bool mask, the CPU kernel a float one
    copy_b = b if autocast else adapter_b
    if s.method == "qlora" and s.bnb_saves_inputs:
        total += sum(width[g] for g in groups if not needs & set(groups[g]))
    for name in lora:
        fan_in = in_sizes[name] * (moe if shape.is_mlp(name) else 1)
        if s.lora_dropout:
            total += fan_in * (mask_b + copy_b)
        elif autocast or adapter_b != b:
            total += fan_in * copy_b
        total += s.lora_r * copy_b * (moe if shape.is_mlp(name) else 1)
    return total


def _logits_per_token(shape: ModelShape, s: Setup) -> float:
    if shape.encoder:
        return 0.0
    b = DTYPE_BYTES[s.dtype]
    if s.loss == "plain":
        # 16-bit logits and the fp32 log-softmax are kept; backward adds fp32 gradients of both
        return shape.vocab * (14.0 if s.logits_fp32 else 4.0 * b)
    if s.loss == "chunked":
        return shape.vocab * 3.0 * b  # 16-bit logits, their gradient and fp32 temporaries of one chunk
    return 0.0


def estimate(shape: ModelShape, setup: Setup) -> Estimate:
    check_setup(setup)
    s = setup.resolved()
    b = DTYPE_BYTES[s.dtype]
    training = s.stage != "inference"
    sequences = s.batch_size * (2 if s.stage.startswith("dpo") else 1)
    tokens = sequences * s.seq_len
    total_params = shape.total_params
    quantized = shape.quantizable_params if s.method == "qlora" else 0
    lora_params = shape.lora_params(s.lora_r, s.lora_targets) if s.method != "full" and training else 0
    trainable = total_params if s.method == "full" else lora_params
    if not training:
        trainable = 0
    master_b = 4 if s.mixed_precision else b
    est = Estimate(shape.name, s, total_params, trainable, tokens)
    add = lambda *args, **kw: est.terms.append(Term(*args, **kw))  # noqa: E731

    # Weights.
    if s.method == "qlora":
        rest_b = 4 if s.upcast_non_quantized and training else b
        nf4 = _nf4_bytes(shape, s.double_quant)
        add("base_weights", "base weights (NF4 linears + absmax)", nf4, "persistent",
            f"{quantized / 1e9:.2f}B params at {nf4 / quantized:.3f} bytes/param"
            f"{' (double quantization)' if s.double_quant else ''}")
        add("other_weights", "embeddings, head, norms", (total_params - quantized) * rest_b, "persistent",
            f"{(total_params - quantized) / 1e9:.2f}B params in {'fp32 (prepared for k-bit training)' if rest_b == 4 else s.dtype}")
    else:
        weight_b = master_b if s.method == "full" and training else b
        add("base_weights", "base weights", total_params * weight_b, "persistent",
            f"{total_params / 1e9:.2f}B params x {weight_b} bytes")
    if lora_params:
        copies = 2 if s.stage == "dpo" else 1
        add("lora_weights", "LoRA adapters" + (" (+ frozen reference copy)" if copies == 2 else ""),
            lora_params * master_b * copies, "persistent", f"r={s.lora_r} on {','.join(s.lora_targets)}: "
                                                           f"{lora_params / 1e6:.1f}M params")
    if training and s.method == "full" and s.stage == "dpo":
        add("reference_model", "reference model (full copy)", total_params * b, "persistent")

    if training:
        # Gradients exist through the backward pass (and across accumulated micro-batches) and at the step.
        if s.grad_accumulation > 1:
            add("gradients", "gradients (accumulating)", trainable * master_b, "forward/backward",
                f"{master_b} bytes per trainable param")
        add("gradients_step", "gradients (at the optimizer step)", trainable * master_b, "optimizer step")
        states = {"adamw": 2 * master_b, "adamw-8bit": 2.0, "paged-adamw": 8.0, "paged-adamw-8bit": 2.0,
                  "sgd": 0.0, "adafactor": 0.0}[s.optimizer]
        phase = "outside allocator" if s.optimizer.startswith("paged") else "persistent"
        add("optimizer_states", f"optimizer states ({s.optimizer})", trainable * states, phase,
            "paged: CUDA unified memory, evicted to host RAM under pressure" if phase != "persistent" else
            f"{states:g} bytes per trainable param")
        temp = master_b if s.optimizer == "adamw" and s.foreach_optimizer else 0.0
        if temp:
            add("optimizer_step", "optimizer-step temporaries", trainable * temp, "optimizer step",
                "foreach AdamW keeps one parameter-sized temporary")
        if s.method == "full" and s.mixed_precision and s.device == "cuda":
            add("autocast_copies", "16-bit weight copies (autocast cache)", shape.quantizable_params * b,
                "forward/backward", "mixed precision casts each fp32 weight once per step")

        per_layer = _activations_per_token(shape, s, s.seq_len)
        residual_b = 4 if (s.upcast_non_quantized or (s.method == "full" and s.mixed_precision)) else b
        if s.grad_checkpointing:
            add("activations_checkpoints", "activations: layer inputs kept (checkpointing)",
                shape.layers * tokens * shape.hidden * residual_b, "forward/backward")
            layer_peak = tokens * per_layer + 2 * tokens * shape.hidden * 4  # one recomputed layer + its grads
            logits = tokens * _logits_per_token(shape, s)
            add("activations_recompute", "activations: one layer recomputed", layer_peak, "forward/backward",
                f"{per_layer / 1024:.1f} KiB per token")
        else:
            add("activations", "activations (all layers)", shape.layers * tokens * per_layer, "forward/backward",
                f"{per_layer / 1024:.1f} KiB per token per layer")
            logits = tokens * _logits_per_token(shape, s)
        if s.loss == "fused" and not shape.encoder:
            logits = tokens * shape.hidden * 4 + FUSED_BUFFER  # fp32 grad of the last hidden state + tile buffers
        add("logits", f"logits and loss ({s.loss})", logits, "forward/backward",
            {"plain": "16 bytes per token per vocab entry", "chunked": "16-bit logits + their gradient",
             "fused": "vocabulary processed in tiles; no logits kept"}[s.loss])
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
    else:
        kv = 2 * shape.layers * shape.kv_heads * shape.dim * b * tokens
        add("kv_cache", "KV cache", kv, "persistent", f"{tokens} tokens")
        add("prefill", "prefill activations (one layer, no grad)",
            tokens * (shape.hidden * 4 * b + shape.intermediate * 3 * b) + s.batch_size * shape.vocab * 4,
            "forward/backward")
    if s.method == "qlora":
        layer = shape.layer_linear_params() // (shape.experts or 1) if shape.experts else shape.layer_linear_params()
        add("dequant", "dequantization buffers", layer * b, "forward/backward",
            "16-bit copies of one layer's weights while it runs")
    add("cuda_context", "CUDA context and kernels", s.cuda_context_gib * GIB, "overhead", "invisible to torch")
    return est
