"""Typed recipes: the schema of every run, validated strictly before any weights load.

A recipe is built from small frozen sections (model, lora, qlora, data, train, dpo). Unknown keys fail with a
"did you mean" suggestion, wrong types and ranges name the field, and all problems are reported at once.
Resolution order: section defaults <- YAML file <- `--set section.key=value` <- first-class flags.
Field names reuse the words of TRL/PEFT/transformers (`learning_rate`, `r`, `alpha`, `beta`, `optim`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from lorakit.errors import ConfigError, LorakitError
from lorakit.io import MAX_DEPTH, read_text, too_deep

Precision = Literal["auto", "bf16", "fp16", "fp32"]

# One spelling per dtype and GGUF type, with the other spellings people write accepted as aliases: a merged model's
# dtype is spelled as torch and transformers spell it (bfloat16), training precision as TrainingArguments' flags
# (bf16), GGUF types as llama.cpp names them (bf16, f16, q8_0).
MERGE_DTYPES = ("bfloat16", "float16", "float32")
MERGE_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16",
                       "fp32": "float32", "f32": "float32", "float": "float32"}
PRECISION_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "f16": "fp16", "half": "fp16", "float32": "fp32",
                     "f32": "fp32", "float": "fp32"}
# GGUF tensor types lorakit writes: with gguf-py (PyPI `gguf`), or K-quants through llama.cpp's quantizer
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
GGUF_K_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
GGUF_TYPE_ALIASES = {"bfloat16": "bf16", "float16": "f16", "fp16": "f16", "half": "f16"}


def merge_dtype(value: str) -> str:
    """bfloat16 / float16 / float32, from any of their spellings (bf16, fp16, fp32 as in train.precision)."""
    return MERGE_DTYPE_ALIASES.get(value.lower(), value) if isinstance(value, str) else value


def precision_name(value: str) -> str:
    """bf16 / fp16 / fp32 (train.precision's spelling), from any of their spellings (bfloat16 as in merge.dtype)."""
    return PRECISION_ALIASES.get(value.lower(), value) if isinstance(value, str) else value


def gguf_type(value: str) -> str:
    """A GGUF type by llama.cpp's name (bf16, f16), from torch's spelling too (bfloat16, float16)."""
    return GGUF_TYPE_ALIASES.get(value.lower(), value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------------------------
# What `lorakit quantize` writes: a target is one output folder, a format plus, where the format has several, its type
# (GGUF) or method (compressed-tensors). Its label is the one spelling everywhere: `--target LABEL`, a pipeline's
# `quantize.targets`, the manifest's `target` and the suffix of the default folder (lorakit.export.targets):
#     gguf-q8_0  gguf-q4_k_m  bnb-4bit  bnb-8bit  w4a16-rtn  w4a16-gptq  w4a16-awq  w8a8-rtn  w8a8-gptq  fp8-dynamic

ALL_GGUF_TYPES = GGUF_TYPES + GGUF_K_TYPES
BNB_FORMATS = ("bnb-4bit", "bnb-8bit")
# compressed-tensors schemes (the checkpoints vLLM, SGLang and TGI load natively) and the methods each takes. RTN
# (round to nearest) needs no data; GPTQ and AWQ calibrate on rows of the run's training data through llm-compressor.
CT_METHODS = {"w4a16": ("rtn", "gptq", "awq"), "w8a8": ("rtn", "gptq"), "fp8": ("dynamic",)}
CT_FORMATS = tuple(CT_METHODS)
QUANTIZE_FORMATS = ("gguf", *BNB_FORMATS, *CT_FORMATS)
CALIBRATED_METHODS = ("gptq", "awq")
# Formats that were once spelled as --format and are methods now (an old recipe or command gets a pointer).
RENAMED_FORMATS = {"gptq": "--format w4a16 --method gptq", "awq": "--format w4a16 --method awq"}


@dataclass(frozen=True)
class Target:
    format: str  # one of QUANTIZE_FORMATS
    type: str | None = None  # GGUF type
    method: str | None = None  # compressed-tensors method

    @property
    def label(self) -> str:
        if self.format == "gguf":
            return f"gguf-{self.type}"
        if self.format in CT_FORMATS:
            return f"{self.format}-{self.method}"
        return self.format

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED_METHODS

    @property
    def family(self) -> str:
        """Which exporter writes it: gguf, bnb or compressed-tensors."""
        return "gguf" if self.format == "gguf" else "bnb" if self.format in BNB_FORMATS else "compressed-tensors"


def make_target(fmt: str, qtype: str | None = None, method: str | None = None, where: str = "--format") -> Target:
    """A target from the separate flags (`--format`, `--type`, `--method`), checked; ConfigError names the flag."""
    fmt = (fmt or "").strip().lower()
    if fmt in RENAMED_FORMATS:
        raise ConfigError(f"{where} {fmt} is a method now, not a format: {fmt.upper()} runs with llm-compressor on "
                          "w4a16 (or w8a8) checkpoints", hint=f"use {RENAMED_FORMATS[fmt]}")
    if fmt not in QUANTIZE_FORMATS:
        raise ConfigError(f"{where} {fmt!r} is not one of {', '.join(QUANTIZE_FORMATS)}",
                          hint="e.g. --format gguf, w4a16")
    if fmt == "gguf":
        if method:
            raise ConfigError(f"--method {method} does not apply to GGUF", hint="GGUF takes --type (q8_0, q4_k_m...)")
        qtype = gguf_type((qtype or "q8_0").strip().lower())
        if qtype not in ALL_GGUF_TYPES:
            raise ConfigError(f"unknown GGUF type {qtype!r}", hint=f"one of {', '.join(ALL_GGUF_TYPES)}")
        return Target("gguf", type=qtype)
    if fmt in BNB_FORMATS:
        if method:
            raise ConfigError(f"--method {method} does not apply to {fmt}", hint="bitsandbytes quantizes on load")
        return Target(fmt)
    methods = CT_METHODS[fmt]
    method = (method or methods[0]).strip().lower()
    if fmt == "fp8" and method == "rtn":
        method = "dynamic"  # FP8 weights are rounded to nearest too; "dynamic" names its per-token activation scales
    if method not in methods:
        raise ConfigError(f"--method {method!r} does not apply to {fmt}: it takes {', '.join(methods)}",
                          hint="w4a16: rtn, gptq or awq; w8a8: rtn or gptq; fp8: dynamic (no calibration)")
    return Target(fmt, method=method)


def parse_target(label: str, where: str = "--target") -> Target:
    """`gguf-q4_k_m`, `w4a16-gptq`, `w4a16` (its first method), `bnb-4bit`... -> Target."""
    text = (label or "").strip().lower()
    for fmt in sorted(QUANTIZE_FORMATS, key=len, reverse=True):  # bnb-4bit before a shorter prefix could claim it
        if text == fmt:
            return make_target(fmt, where=where)
        if text.startswith(fmt + "-"):
            rest = text[len(fmt) + 1:]
            if fmt == "gguf":
                return make_target(fmt, qtype=rest, where=where)
            if fmt in CT_FORMATS:
                return make_target(fmt, method=rest, where=where)
    examples = "gguf-q8_0, gguf-q4_k_m, bnb-4bit, w4a16-rtn, w4a16-gptq, w8a8-rtn, fp8-dynamic"
    raise ConfigError(f"{where} {label!r} is not a quantize target", hint=f"FORMAT or FORMAT-TYPE/METHOD: {examples}")


def unique(targets: list[Target]) -> list[Target]:
    """The targets in order, each once (two spellings of one target would write one folder twice)."""
    seen: dict[str, Target] = {}
    for target in targets:
        seen.setdefault(target.label, target)
    return list(seen.values())


class Section(BaseModel):
    # strict: `r: true` is not the integer 1, `r: "8"` is not 8; YAML and --set give real types already (Float below
    # takes the one YAML quirk).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


def _not_blank(value, what: str = "a name"):
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"must be {what}, not an empty string")
    return value


def _yaml_float(value):
    # YAML 1.1 (PyYAML) reads 2e-4 as the string "2e-4": a number in scientific notation is still a number here.
    if isinstance(value, str) and _looks_like_float(value.strip()):
        return float(value)
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]

# Seeds go to numpy, which takes 0 <= seed < 2**32 (torch and random take more; numpy is the narrowest).
SEED_RANGE = dict(ge=0, lt=2**32)


class ModelSection(Section):
    name_or_path: str = Field(
        "builtin:tiny-llama",
        description="Hugging Face hub id, local folder, or builtin:tiny-llama (built locally, no download).",
    )
    revision: str | None = None
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    chat_template: str | None = Field(
        None,
        description="A .jinja file, inline Jinja, or a family's format by name (chatml, gemma, llama3, phi3, "
                    "mistral). Default: the tokenizer's own, else its model family's (lorakit.chat_families).",
    )

    @field_validator("name_or_path")
    @classmethod
    def _a_model(cls, value):
        return _not_blank(value, "a hub id, a folder or builtin:tiny-llama")


class LoraSection(Section):
    r: int = Field(16, gt=0, le=4096)
    alpha: Float = Field(32, gt=0, description="Scaling is alpha/r (alpha/sqrt(r) with use_rslora).")
    dropout: Float = Field(0.05, ge=0, lt=1)
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    target_parameters: list[str] = Field(
        default_factory=list, description="Parameters that are not linear layers to adapt too (PEFT "
        "target_parameters): a mixture-of-experts model's fused expert weights, e.g. [mlp.experts.gate_up_proj, "
        "mlp.experts.down_proj] for Qwen3-MoE.")
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)
    bias: Literal["none", "all", "lora_only"] = "none"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("must be 'all-linear' or a non-empty list of module names")
        return value


class QLoraSection(Section):
    """How the base is quantized when method is qlora (bitsandbytes 4-bit)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    upcast_to_fp32: Union[Literal["auto"], bool] = Field(
        "auto",
        description="Cast the base's embeddings, norms and head to fp32 (PEFT's prepare_model_for_kbit_training), "
        "which makes the residual stream and every 4-bit layer's output fp32: twice the activation memory. auto = "
        "no in bf16 (norm statistics and the loss are still fp32), yes in fp16 (its range can overflow), no "
        "difference in fp32.",
    )


DataFormat = Literal[
    "auto",
    # supervised
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "prompt",  # prompts only (GRPO): a prompt column, text or messages
    "text",
    # preference
    "preference",
    "implicit_preference",
    "hh",
    "system_question",
]


class DataSection(Section):
    train: str | None = Field(None, description="File, folder of files, or hub dataset id (org/name).")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = "train"
    format: DataFormat = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map lorakit's column names to yours, e.g. {messages: dialog}."
    )
    system_prompt: str | None = None
    tools: str | list[dict[str, Any]] | None = Field(
        None, description="Tool specs offered in every row without its own `tools`: a JSON file or an inline list "
                          "of OpenAI-style functions.")
    train_on: Literal["assistant", "all"] = Field("assistant", description="Which tokens carry the loss.")
    val_size: Float = Field(0.0, ge=0, lt=1, description="Fraction of rows held out for eval loss.")
    eval: str | None = Field(None, description="A separate eval file (instead of val_size).")
    max_length: int = Field(2048, gt=8, description="Tokens per example; longer examples are truncated.")
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows (quick experiments).")
    num_proc: int | None = Field(None, gt=0, description="Processes for tokenization of large datasets.")
    # Screening before training (lorakit.data.quality; thresholds and why: docs/data-quality.md)
    dedup: Literal["off", "report", "exact", "near"] = Field(
        "report", description="Duplicates in the training set and repeats of eval rows: report them (default), drop "
        "exact repeats (exact), or drop near-duplicates too (near).")
    dedup_threshold: Float = Field(0.6, gt=0, le=1, description="Near-duplicate: estimated Jaccard similarity of "
                                   "the rows' word n-gram sets (MinHash LSH) at least this.")
    dedup_ngram: int = Field(2, ge=1, le=32, description="Words per shingle for the near-duplicate check.")
    decontaminate: Literal["off", "report", "drop"] = Field(
        "report", description="Training rows that contain an eval or benchmark row (n-gram overlap): report them "
        "(default) or drop them.")
    contamination_ngram: int = Field(13, ge=1, le=64, description="Words per n-gram of the contamination check "
                                     "(13: lm-eval's decontamination convention).")
    contamination_threshold: Float = Field(0.5, ge=0, le=1, description="A training row is contaminated when it "
                                           "holds at least this fraction of a benchmark row's n-grams (0: any one).")
    contamination_against: list[str] = Field(
        default_factory=list, description="Benchmark files to check the training rows against, beside the eval data "
        "(.jsonl/.json/.csv/.parquet/.txt, or an lm-eval task .yaml with local data).")

    @model_validator(mode="after")
    def _one_eval_source(self):
        if self.val_size and self.eval:
            raise ValueError("data.val_size and data.eval: set one of them, not both")
        return self


Optim = Literal[
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
]


class TrainSection(Section):
    epochs: Float = Field(1.0, gt=0, le=100)
    max_steps: int = Field(-1, ge=-1, description="Overrides epochs when > 0.")
    micro_batch_size: int = Field(1, gt=0, description="Examples per forward pass when micro_batch_tokens is null; "
                                  "otherwise micro_batch_size x gradient_accumulation_steps is the optimizer step.")
    gradient_accumulation_steps: int = Field(8, gt=0)
    micro_batch_tokens: Union[Literal["auto"], int, None] = Field(
        "auto",
        description="SFT: fill each forward pass with whole examples up to this many tokens (padding-free), taking "
        "the micro_batch_size x gradient_accumulation_steps examples of an optimizer step in as few passes as fit; "
        "the step, its loss and the schedule are unchanged. auto = the longest row that fits the GPU (planner), "
        "8192 on the CPU; null = micro_batch_size examples per pass. DPO and multi-process runs batch by examples.",
    )
    learning_rate: Float = Field(2.0e-4, gt=0, lt=1)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Float = Field(0.03, ge=0, lt=1)
    weight_decay: Float = Field(0.0, ge=0)
    max_grad_norm: Float = Field(1.0, ge=0)
    optim: Optim = Field("auto", description="auto = paged_adamw_8bit for QLoRA on CUDA, else adamw_torch.")
    adam_beta1: Float = Field(0.9, ge=0, lt=1)
    adam_beta2: Float = Field(0.999, ge=0, lt=1)
    precision: Precision = Field("auto", description="auto = bf16 where supported, fp16 on older GPUs, fp32 on CPU.")
    gradient_checkpointing: bool = True
    activation_offloading: bool = Field(
        False, description="Move saved activations to pinned host RAM during forward and back for backward (TRL's "
        "activation_offloading, torchtune's OffloadActivations); CUDA only: on the CPU they already live in host RAM.",
    )
    padding_free: Union[Literal["auto"], bool] = Field(
        "auto",
        description="Concatenate a batch's examples without padding (position ids reset per example). auto = on when "
        "a probe on the loaded model shows no cross-example attention; otherwise length-grouped batches.",
    )
    loss: Literal["auto", "plain", "fused"] = Field(
        "auto",
        description="plain = cross-entropy over full logits; fused = TRL's tiled LM head that never builds the "
        "logits. auto = fused on CUDA (saves memory at large vocabularies), plain on the CPU (about 2x faster there).",
    )
    liger: Union[Literal["auto"], bool] = Field(
        "auto",
        description="Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (the LM head stays TRL's fused one, which "
        "already never builds the logits). auto = on a CUDA GPU when liger-kernel is installed; CUDA only.",
    )
    compile: bool = Field(
        False, description="torch.compile the model (transformers' torch_compile). Off by default: the first steps "
        "pay the compilation, and packed rows of new lengths recompile.",
    )
    tiled_mlp: Union[Literal["auto"], bool] = Field(
        "auto",
        description="Run each decoder layer's MLP over the sequence in tiles of max(1024, hidden size) tokens, "
        "recomputing one tile at a time in backward, so no layer holds a full-length MLP intermediate (same results; "
        "one more MLP forward per layer). auto = with gradient checkpointing, when one recomputed layer is the "
        "largest activation term at data.max_length and, on a CUDA GPU, the run would not fit without tiles.",
    )
    seed: int = Field(42, **SEED_RANGE)
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(100, gt=0, description="Checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="Default: evaluate every save_steps.")
    keep: Literal["last", "best"] = Field(
        "last", description="The adapter the run keeps: the last step's, or the best by train.best_metric on the eval "
        "data (a checkpoint is saved at every evaluation then; rotation never deletes the best).")
    best_metric: Literal["auto", "eval_loss"] = Field("auto", description="What `best` means: auto = eval_loss.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without improving train.best_metric (needs eval "
        "data).")
    # Verified offline: tensorboard (events under checkpoints/runs/), wandb with WANDB_MODE=offline, trackio (local).
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(default_factory=list)

    @field_validator("micro_batch_tokens")
    @classmethod
    def _a_budget(cls, value):
        if isinstance(value, bool) or (isinstance(value, int) and value < 16):
            raise ValueError("must be auto, null or a number of tokens (at least 16)")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_logger_as_a_list(cls, value):
        # `--set train.report_to=tensorboard` is how people write it; "none" is TRL's word for no logger
        if isinstance(value, str):
            return [] if value.lower() == "none" else [value]
        return value


class DPOTrainSection(TrainSection):
    # DPO moves a LoRA policy away from a reference it starts equal to: a far smaller step than SFT's 2e-4 keeps it
    # from collapsing (full fine-tunes use 5e-7..5e-6; LoRA tolerates about 10x more).
    learning_rate: Float = Field(5.0e-5, gt=0, lt=1)
    warmup_ratio: Float = Field(0.1, ge=0, lt=1)
    best_metric: Literal["auto", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"] = Field(
        "auto", description="What `best` means: auto = eval_loss (DPO's loss on the eval pairs); or the eval reward "
        "accuracy or margin (higher is better).")


class DPOSection(Section):
    beta: Float = Field(0.1, gt=0, description="Strength of the pull toward the reference model.")
    loss_type: Literal[
        "sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "aot", "aot_pair",
        "apo_zero", "apo_down", "discopop", "sft",
    ] = "sigmoid"
    label_smoothing: Float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO / robust loss noise rate.")
    max_prompt_length: int | None = Field(512, gt=0)
    precompute_ref_log_probs: bool | Literal["auto"] = Field(
        "auto", description="Score the reference once up front, so training needs no reference forward pass; "
                            "auto: only on a CUDA GPU that the estimate says is tight for the reference forward.",
    )


Strategy = Literal["ddp", "fsdp", "zero2", "zero3"]


class DistributedSection(Section):
    """Training on several processes (one per GPU) through accelerate; 1 process = no distribution.

    The global batch is micro_batch_size x gradient_accumulation_steps x num_processes; steps, epochs, the learning
    rate schedule and logging count optimizer steps of that global batch, as in one process.
    """

    num_processes: int = Field(1, ge=1, le=4096, description="Processes in all (one per GPU); >1 relaunches lorakit "
                               "under accelerate.")
    strategy: Strategy = Field(
        "ddp", description="ddp = every GPU holds the whole model; fsdp = weights, gradients and optimizer states "
        "sharded (PyTorch FSDP, QLoRA included); zero2 / zero3 = DeepSpeed ZeRO (optimizer states and gradients / "
        "also weights sharded).")
    accelerate_config: str | None = Field(
        None, description="An accelerate config file (from `accelerate config`) used instead of the one lorakit "
        "writes: several machines, offloading, your own FSDP/DeepSpeed settings.")


class BaseRecipe(Section):
    stage: str
    output_dir: str = "out/run"
    # The recipe file this was loaded from (not a field: never saved); --force never replaces a folder holding it.
    _file: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _best_needs_eval_data(self):
        train = getattr(self, "train", None)
        if train is None or self.data.eval or self.data.val_size:
            return self
        if train.keep == "best":
            raise ValueError("train.keep: best needs eval data to choose by: set data.eval or data.val_size")
        if train.early_stopping_patience:
            raise ValueError("train.early_stopping_patience needs eval data: set data.eval or data.val_size")
        return self

    @field_validator("output_dir")
    @classmethod
    def _a_folder(cls, value):
        return _not_blank(value, "a folder")
    method: Literal["lora", "qlora"] = Field("lora", description="qlora = 4-bit NF4 base via bitsandbytes.")
    model: ModelSection = ModelSection()
    lora: LoraSection = LoraSection()
    qlora: QLoraSection = QLoraSection()
    data: DataSection = DataSection()
    preflight: bool = Field(True, description="Estimate GPU memory before loading weights; stop if it cannot fit.")
    distributed: DistributedSection = DistributedSection()


class SFTRecipe(BaseRecipe):
    stage: Literal["sft"] = "sft"
    output_dir: str = "out/sft"
    train: TrainSection = TrainSection()


class DPORecipe(BaseRecipe):
    stage: Literal["dpo"] = "dpo"
    output_dir: str = "out/dpo"
    from_run: str | None = Field(
        None, description="SFT run folder to continue from; its model, method, LoRA and template are reused."
    )
    train: DPOTrainSection = DPOTrainSection()
    dpo: DPOSection = DPOSection()


class GRPOTrainSection(TrainSection):
    # micro_batch_size counts completions, as in TRL: with num_generations 8, micro-batch 8 x accumulation 1 is one
    # prompt and its 8 completions per optimizer step.
    micro_batch_size: int = Field(8, gt=0, description="Completions per micro-batch (TRL's per_device_train_batch_size"
                                  "); micro_batch_size x gradient_accumulation_steps x processes must be a multiple of "
                                  "grpo.num_generations.")
    gradient_accumulation_steps: int = Field(1, gt=0)
    # RL on a LoRA policy takes small steps (TRL's full fine-tune default is 1e-6; LoRA tolerates about 10x more than
    # the step of a full model, and GRPO's clipped ratio keeps each update near the sampling policy).
    learning_rate: Float = Field(1.0e-5, gt=0, lt=1)
    warmup_ratio: Float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "constant"
    logging_steps: int = Field(1, gt=0, description="Every step costs a generation round: log each one.")
    save_steps: int = Field(50, gt=0, description="Checkpoint every N optimizer steps.")
    # GRPO's loss is a policy-gradient surrogate (zero when a group's rewards agree), not a fit: keep by reward.
    AUTO_BEST_METRIC: ClassVar[str] = "eval_reward"
    best_metric: Literal["auto", "eval_reward"] = Field(
        "auto", description="What `best` means: auto = eval_reward (the mean reward of completions sampled for the "
        "eval prompts; higher is better).")


REWARD_NAMES = ("exact_answer", "math", "regex", "format", "json", "length")


class RewardSpec(Section):
    """One reward function: a built-in name, `path/to/file.py:function` (your own Python), or a folder holding a
    sequence-classification reward model. `weight` is its share of the total reward (TRL's reward_weights)."""

    name: str = Field(description=f"Built-in ({', '.join(REWARD_NAMES)}), FILE.py:FUNCTION, or a reward-model folder.")
    weight: Float = Field(1.0, description="Multiplies this reward in the sum GRPO normalizes per group.")
    column: str | None = Field(None, description="exact_answer / math: the data column with the reference answer "
                                                 "(default: answer).")
    pattern: str | None = Field(None, description="regex: a pattern found anywhere in the reply; format: a pattern "
                                                  "the whole reply must match (default: a <think>...</think> block "
                                                  "then an answer).")
    schema_: str | dict[str, Any] | None = Field(None, alias="schema", description="json: a JSON Schema (a .json file "
                                                 "or an inline mapping) the reply must satisfy.")
    soft_punish_cache: int | None = Field(None, gt=0, description="length: the last N tokens before "
                                          "max_completion_length where the penalty ramps from 0 to -1 (default: a "
                                          "quarter of max_completion_length).")

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False,
                              populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="before")
    @classmethod
    def _a_name_alone(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _a_reward(cls, value):
        return _not_blank(value, f"a built-in reward ({', '.join(REWARD_NAMES)}), FILE.py:FUNCTION or a folder")

    @model_validator(mode="after")
    def _options_that_apply(self):
        kind = self.name if self.name in REWARD_NAMES else "user"
        allowed = {"exact_answer": {"column"}, "math": {"column"}, "regex": {"pattern"}, "format": {"pattern"},
                   "json": {"schema_"}, "length": {"soft_punish_cache"}, "user": set()}[kind]
        given = {name for name in ("column", "pattern", "schema_", "soft_punish_cache") if getattr(self, name) is not None}
        extra = sorted(given - allowed)
        if extra:
            shown = ", ".join(e.rstrip("_") for e in extra)
            raise ValueError(f"reward {self.name!r} takes no {shown} ({kind} rewards read "
                             f"{', '.join(sorted(a.rstrip('_') for a in allowed)) or 'no option'})")
        if self.name == "regex" and self.pattern is None:
            raise ValueError("reward 'regex' needs a pattern, e.g. {name: regex, pattern: 'Answer: \\d+'}")
        if self.pattern is not None:
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        return self


class GRPOSection(Section):
    """Group Relative Policy Optimization (TRL's GRPOTrainer); the names are TRL's."""

    rewards: list[RewardSpec] = Field(default_factory=list, description="What a completion is scored by; the rewards "
                                      "are summed with their weights.")
    num_generations: int = Field(8, ge=2, le=1024, description="Completions sampled per prompt (the group whose "
                                 "rewards are compared).")
    max_completion_length: int = Field(256, gt=0, description="Tokens a completion may have; data.max_length bounds "
                                       "prompt + completion.")
    temperature: Float = Field(1.0, gt=0, le=10, description="Sampling temperature for the completions (and the "
                               "log-probs GRPO scores them with).")
    top_p: Float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off.")
    beta: Float = Field(0.0, ge=0, description="KL pull toward the reference (the parent run, or the base); 0 skips "
                        "the reference pass entirely.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    epsilon: Float = Field(0.2, gt=0, lt=1, description="Clip range of the probability ratio.")
    epsilon_high: Float | None = Field(None, gt=0, description="Upper clip (DAPO's 0.28); default: epsilon.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's reward std (group), the batch's (batch), or not "
        "(none, Dr. GRPO).")
    mask_truncated_completions: bool = Field(False, description="Leave completions cut at max_completion_length out "
                                             "of the loss (DAPO).")
    generation: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto = vLLM in the same process on a CUDA GPU when vllm is installed, transformers' "
        "generate otherwise.")
    vllm_gpu_memory_utilization: Float = Field(0.3, gt=0, lt=1, description="vLLM's share of the GPU (colocate mode).")
    vllm_enable_sleep_mode: bool | Literal["auto"] = Field(
        "auto", description="Offload vLLM's weights and cache during the optimizer step; auto = when the estimate is "
        "tight on the GPU.")
    samples_steps: int = Field(10, gt=0, description="Write the step's prompts, completions and rewards to "
                               "samples.jsonl every N steps.")

    @field_validator("rewards", mode="before")
    @classmethod
    def _one_reward_or_a_comma_list(cls, value):
        # `--set grpo.rewards=exact_answer,format` and `--reward exact_answer,format --reward length` spell lists as
        # text: each text item may name several rewards, comma-separated
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        rewards: list[Any] = []
        for item in value:
            rewards += [n.strip() for n in item.split(",") if n.strip()] if isinstance(item, str) else [item]
        return rewards


class GRPORecipe(BaseRecipe):
    stage: Literal["grpo"] = "grpo"
    output_dir: str = "out/grpo"
    from_run: str | None = Field(
        None, description="SFT or DPO run folder to continue from; its model, method, LoRA and template are reused."
    )
    train: GRPOTrainSection = GRPOTrainSection()
    grpo: GRPOSection = GRPOSection()

    @model_validator(mode="after")
    def _whole_groups(self):
        batch = self.train.micro_batch_size * self.train.gradient_accumulation_steps * self.distributed.num_processes
        if batch % self.grpo.num_generations:
            raise ValueError(
                f"train.micro_batch_size x gradient_accumulation_steps x processes = {batch} completions per step is "
                f"not a multiple of grpo.num_generations ({self.grpo.num_generations}): every prompt's group must be "
                "whole in a step")
        if not self.grpo.rewards:
            raise ValueError("grpo.rewards is empty: name at least one reward (e.g. --reward exact_answer)")
        return self


class MergeSection(Section):
    dtype: Annotated[Literal["bfloat16", "float16", "float32"], BeforeValidator(merge_dtype)] = Field(
        "bfloat16", description="bf16, fp16 and fp32 are accepted for bfloat16, float16 and float32.")
    base: Literal["dequantized", "original"] = Field(
        "dequantized", description="QLoRA runs: merge into the dequantized NF4 weights (exact) or the original ones."
    )
    max_shard_size: str = "2GB"

    @field_validator("max_shard_size")
    @classmethod
    def _a_size(cls, value):
        if shard_size_bytes(value) is None:
            raise ValueError("must be a positive size such as 2GB or 500MB")
        return value


def shard_size_bytes(text: str) -> int | None:
    """'2GB' -> 2e9 (the units huggingface_hub's sharding reads); None for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)\s*", str(text), re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        return None
    return int(float(match.group(1)) * 1000 ** ("KMGT".index(match.group(2)[0].upper()) + 1))


class QuantizeSection(Section):
    """One target (format + type or method), or several (`targets`), each written to its own verified folder."""

    format: Literal["gguf", "bnb-4bit", "bnb-8bit", "w4a16", "w8a8", "fp8"] = "gguf"
    type: Annotated[str, BeforeValidator(gguf_type)] = Field(
        "q8_0", description="GGUF type: f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k (bfloat16 and "
                            "float16 are accepted for bf16 and f16).")
    method: str | None = Field(None, description="compressed-tensors: rtn (default), gptq or awq (w4a16); rtn or "
                               "gptq (w8a8); dynamic (fp8).")
    targets: list[str] = Field(default_factory=list, description="Several targets instead of format/type/method, "
                               "each FORMAT-TYPE/METHOD (gguf-q8_0, gguf-q4_k_m, w4a16-gptq): ROOT/export-LABEL each.")
    calibration_data: str | None = Field(None, description="GPTQ/AWQ: chats to calibrate on (default: the training "
                                         "data of the run being quantized).")
    calibration_rows: int = Field(256, ge=16, description="GPTQ/AWQ: rows of calibration data.")
    verify: bool = True

    @field_validator("type")
    @classmethod
    def _a_gguf_type(cls, value):
        if value.lower() not in ALL_GGUF_TYPES:
            raise ValueError(f"is not a GGUF type: one of {', '.join(ALL_GGUF_TYPES)}")
        return value

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value):
        for label in value:
            try:
                parse_target(label, "target")
            except LorakitError as exc:
                raise ValueError(f"{exc.message} ({exc.hint})") from None
        return value

    @model_validator(mode="after")
    def _one_way_to_name_targets(self):
        if self.targets and {"format", "type", "method"} & self.model_fields_set:
            raise ValueError("give either targets or format/type/method, not both")
        if not self.targets:
            if "type" in self.model_fields_set and self.format != "gguf":
                raise ValueError(f"type {self.type} is a GGUF type; format {self.format} takes method instead")
            try:
                make_target(self.format, self.type if self.format == "gguf" else None, self.method, "format")
            except LorakitError as exc:
                raise ValueError(exc.message) from None
        return self

    def resolved_targets(self) -> list[Target]:
        """The quantize targets this section asks for, in order, each once."""
        if self.targets:
            return unique([parse_target(label, "quantize.targets") for label in self.targets])
        return [make_target(self.format, self.type if self.format == "gguf" else None, self.method)]


STAGE_ORDER = ("sft", "dpo", "grpo", "merge", "quantize")  # the pipeline's order


class PipelineRecipe(Section):
    """A whole run: each stage's section has the same schema as its single-stage recipe."""

    stage: Literal["pipeline"] = "pipeline"
    root: str = Field("out/pipeline", description="Each stage writes its own folder under this one.")
    _file: Path | None = PrivateAttr(None)

    @field_validator("root")
    @classmethod
    def _a_folder(cls, value):
        return _not_blank(value, "a folder")
    stages: list[Literal["sft", "dpo", "grpo", "merge", "quantize"]] = Field(
        default_factory=lambda: ["sft", "dpo", "merge", "quantize"])
    sft: SFTRecipe | None = None
    dpo: DPORecipe | None = None
    grpo: GRPORecipe | None = None
    merge: MergeSection = MergeSection()
    quantize: QuantizeSection = QuantizeSection()

    @model_validator(mode="after")
    def _stages_make_a_chain(self):
        if not self.stages:
            raise ValueError("stages is empty")
        if list(self.stages) != [s for s in STAGE_ORDER if s in self.stages]:
            raise ValueError(f"stages must be a subset of {list(STAGE_ORDER)} in that order")
        for name in self.stages:  # a training stage's section is optional; merge and quantize have defaults
            if getattr(self, name) is None:
                raise ValueError(f"stage '{name}' is listed but the recipe has no '{name}' section")
        if self.stages[0] in ("merge", "quantize"):
            raise ValueError("stages must start with sft, dpo or grpo; merge and quantize single runs with their "
                             "commands")
        return self


RECIPES: dict[str, type[BaseModel]] = {"sft": SFTRecipe, "dpo": DPORecipe, "grpo": GRPORecipe,
                                       "pipeline": PipelineRecipe}

# First-class CLI flags and the recipe field each one sets.
FLAG_FIELDS = {
    "model": "model.name_or_path",
    "data": "data.train",
    "output_dir": "output_dir",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    "from_run": "from_run",
    "num_processes": "distributed.num_processes",
    "strategy": "distributed.strategy",
    "accelerate_config": "distributed.accelerate_config",
    "rewards": "grpo.rewards",
}


# ---------------------------------------------------------------------------------------------------------------
# Loading


def shipped_recipes() -> dict[str, Path]:
    """The recipes installed with lorakit (recipes/ in the repository), by name without .yaml."""
    from importlib import resources

    try:
        folder = resources.files("lorakit.recipes")
    except ModuleNotFoundError:
        return {}
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def find_recipe(path: str | Path) -> Path:
    """A recipe file, or the name of a shipped recipe (`tiny-cpu-sft`, with or without .yaml)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        shipped = shipped_recipes().get(path.name.removesuffix(".yaml"))
        if shipped is not None and shipped.is_file():
            return shipped
    names = ", ".join(sorted(shipped_recipes()))
    raise ConfigError(f"recipe {path} not found", hint=f"check the path, or name a shipped recipe: {names}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = find_recipe(path)
    data = parse_yaml(read_text(path, ConfigError), path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections", hint="see recipes/tiny-cpu-sft.yaml")
    return data


def parse_yaml(text: str, where: str | Path) -> Any:
    """yaml.safe_load with every failure one ConfigError naming `where`: syntax (with its line), nesting too deep
    for the parser or a later walk, integers too long to convert."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _yaml_problem(where, line, f"invalid YAML: {problem}", "fix the YAML syntax") from None
    except RecursionError:
        raise _yaml_problem(where, "", f"nested too deeply (more than {MAX_DEPTH} levels)", "flatten it") from None
    except ValueError as exc:  # int("9" * 5000): "Exceeds the limit (4300 digits)"
        problem = "an integer too long to read (more than 4300 digits)" if "digits" in str(exc) else str(exc)
        raise _yaml_problem(where, "", problem, "fix the value") from None
    if text.count("[") + text.count("{") + text.count(":") + text.count("-") > MAX_DEPTH and too_deep(data):
        raise _yaml_problem(where, "", f"nested too deeply (more than {MAX_DEPTH} levels)", "flatten it")
    return data


def _yaml_problem(where, line: str, what: str, hint: str) -> ConfigError:
    exc = ConfigError(f"{where}{line}: {what}", hint=hint)
    exc.what = f"{what}{' at' + line if line else ''}"  # type: ignore[attr-defined]
    return exc


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1.0e-4` -> (['train', 'learning_rate'], 0.0001). Values are read as YAML scalars."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value", hint="e.g. --set lora.r=32")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key", hint="e.g. --set lora.r=32")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except (RecursionError, ValueError):
        raise ConfigError(f"--set {key.strip()}: the value is nested too deeply or holds a number too long to read",
                          hint="e.g. --set lora.r=32") from None
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads 2e-4 as a string; a user typing it on a command line means a number
    return parts, value


def _looks_like_float(text: str) -> bool:
    try:
        number = float(text)
    except ValueError:
        return False
    # "inf"/"nan" are words, not numbers a user means; 1e400 overflows to inf
    return any(c in text for c in "eE.") and number == number and abs(number) != float("inf")


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_recipe(
    stage: str,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> BaseRecipe:
    """Resolve a recipe: defaults <- `base` <- YAML file <- --set overrides <- first-class flags."""
    data: dict[str, Any] = _deep_copy(base or {})
    source = str(path) if path else "command line"
    if path is not None:
        _deep_merge(data, read_yaml(path))
    file_stage = data.get("stage")
    if file_stage is not None and not isinstance(file_stage, str):
        raise ConfigError(f"{source}: stage must be one word ({', '.join(RECIPES)}), got {file_stage!r}"[:300],
                          hint=f"stage: {stage}")
    if file_stage is not None and file_stage != stage:
        raise ConfigError(
            f"{source}: this is a '{file_stage}' recipe, not '{stage}'",
            hint=(f"run it with `lorakit run {source}`" if file_stage == "pipeline"
                  else f"run it with `lorakit {file_stage} --recipe {source}`" if file_stage in RECIPES else None),
        )
    data["stage"] = stage
    for assignment in overrides or []:
        parts, value = parse_set(assignment)
        set_path(data, parts, value)
    for flag, value in (flags or {}).items():
        if value is not None:
            set_path(data, FLAG_FIELDS[flag].split("."), value)
    recipe = validate_recipe(RECIPES[stage], data, source)
    if path is not None:
        recipe._file = find_recipe(path)
    return recipe


def validate_recipe(cls: type[BaseRecipe], data: dict[str, Any], source: str) -> BaseRecipe:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = [describe_error(cls, err) for err in exc.errors()]
        if len(problems) == 1:
            raise ConfigError(f"{source}: {problems[0]}",
                              hint="fix that field; `--print-config` shows the resolved recipe") from None
        raise ConfigError(
            f"{source}: {len(problems)} problems in the recipe:\n  - " + "\n  - ".join(problems),
            hint="fix the fields above; `--print-config` shows the resolved recipe",
        ) from None


def describe_error(cls: type[BaseModel], err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or "(recipe)"
    if err["type"] == "extra_forbidden":
        known = known_keys(cls, loc[:-1])
        alias = ALIASES.get(loc[-1])
        close = [alias] if alias in known else difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        suggestion = f"; did you mean '{'.'.join(loc[:-1] + [close[0]])}'?" if close else ""
        return f"{field}: unknown key{suggestion}"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    given = err.get("input")
    if err["type"] not in ("missing",) and not isinstance(given, (dict, list)):
        shown = repr(given)
        message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return f"{field}: {message}"


# Names other tools use for lorakit's fields, so a recipe ported from TRL, PEFT or axolotl gets a useful hint.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lr": "learning_rate",
    "num_train_epochs": "epochs", "num_epochs": "epochs", "per_device_train_batch_size": "micro_batch_size",
    "batch_size": "micro_batch_size", "optimizer": "optim", "model_name_or_path": "name_or_path",
    "base_model": "name_or_path", "max_seq_length": "max_length", "sequence_len": "max_length",
    "gradient_accumulation": "gradient_accumulation_steps", "path": "train", "dataset": "train",
    "nproc_per_node": "num_processes", "world_size": "num_processes", "num_gpus": "num_processes",
    "distributed_type": "strategy", "config_file": "accelerate_config",
}


def known_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names valid at a location, for 'did you mean' suggestions."""
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        # `X | None` sections: look inside the model member of the union
        for member in getattr(model, "__args__", ()):
            if hasattr(member, "model_fields"):
                model = member
    return list(getattr(model, "model_fields", {}).keys())


def recipe_to_dict(recipe: BaseModel) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def recipe_to_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=False)


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(data)) if data else {}


# A DPO or GRPO run that continues an earlier run takes these sections from it.
INHERITED = ("method", "model", "lora", "qlora")


def inherit_from_parent(recipe, parent):
    """Take model, method, LoRA and quantization from the parent run (`parent`: a `lorakit.outputs.Run`, or anything
    with its validated `.recipe` and `.path`); refuse a DPO / GRPO recipe that says otherwise."""
    mine, theirs = recipe_to_dict(recipe), recipe_to_dict(parent.recipe)
    conflicts = [section for section in INHERITED
                 if section in recipe.model_fields_set and mine[section] != theirs[section]]
    if conflicts:
        raise ConfigError(
            f"the {recipe.stage.upper()} recipe sets {', '.join(conflicts)}, but `from_run` {parent.path} decides "
            f"those (the policy continues the {parent.recipe.stage.upper()} adapter on the same base)",
            hint=f"remove {', '.join(conflicts)} from the {recipe.stage.upper()} recipe, or drop from_run to start "
                 "from a base model",
        )
    return recipe.model_copy(update={section: getattr(parent.recipe, section) for section in INHERITED})
