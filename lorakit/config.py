"""Typed recipes: the schema of every run, validated strictly before any weights load.

A recipe is built from small frozen sections (model, lora, qlora, data, train, dpo). Unknown keys fail with a
"did you mean" suggestion, wrong types and ranges name the field, and all problems are reported at once.
Resolution order: section defaults <- YAML file <- `--set section.key=value` <- first-class flags.
Field names reuse the words of TRL/PEFT/transformers (`learning_rate`, `r`, `alpha`, `beta`, `optim`).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

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

from lorakit.errors import ConfigError
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


DataFormat = Literal[
    "auto",
    # supervised
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
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
    micro_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(8, gt=0)
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
    format: Literal["gguf", "bnb-4bit", "bnb-8bit"] = "gguf"
    type: Annotated[str, BeforeValidator(gguf_type)] = Field(
        "q8_0", description="GGUF type: f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k (bfloat16 and "
                            "float16 are accepted for bf16 and f16).")
    verify: bool = True

    @field_validator("type")
    @classmethod
    def _a_gguf_type(cls, value):
        if value.lower() not in GGUF_TYPES + GGUF_K_TYPES:
            raise ValueError(f"is not a GGUF type: one of {', '.join(GGUF_TYPES + GGUF_K_TYPES)}")
        return value


STAGE_ORDER = ("sft", "dpo", "merge", "quantize")


class PipelineRecipe(Section):
    """A whole run: each stage's section has the same schema as its single-stage recipe."""

    stage: Literal["pipeline"] = "pipeline"
    root: str = Field("out/pipeline", description="Each stage writes its own folder under this one.")
    _file: Path | None = PrivateAttr(None)

    @field_validator("root")
    @classmethod
    def _a_folder(cls, value):
        return _not_blank(value, "a folder")
    stages: list[Literal["sft", "dpo", "merge", "quantize"]] = Field(default_factory=lambda: list(STAGE_ORDER))
    sft: SFTRecipe | None = None
    dpo: DPORecipe | None = None
    merge: MergeSection = MergeSection()
    quantize: QuantizeSection = QuantizeSection()

    @model_validator(mode="after")
    def _stages_make_a_chain(self):
        if not self.stages:
            raise ValueError("stages is empty")
        if list(self.stages) != [s for s in STAGE_ORDER if s in self.stages]:
            raise ValueError(f"stages must be a subset of {list(STAGE_ORDER)} in that order")
        for name in ("sft", "dpo"):
            if name in self.stages and getattr(self, name) is None:
                raise ValueError(f"stage '{name}' is listed but the recipe has no '{name}' section")
        if self.stages[0] in ("merge", "quantize"):
            raise ValueError("stages must start with sft or dpo; merge and quantize single runs with their commands")
        return self


RECIPES: dict[str, type[BaseModel]] = {"sft": SFTRecipe, "dpo": DPORecipe, "pipeline": PipelineRecipe}

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


# A DPO run that continues an SFT run takes these sections from it.
INHERITED = ("method", "model", "lora", "qlora")


def inherit_from_parent(recipe: DPORecipe, parent) -> DPORecipe:
    """Take model, method, LoRA and quantization from the SFT run (`parent`: a `lorakit.outputs.Run`, or anything with
    its validated `.recipe` and `.path`); refuse a DPO recipe that says otherwise."""
    mine, theirs = recipe_to_dict(recipe), recipe_to_dict(parent.recipe)
    conflicts = [section for section in INHERITED
                 if section in recipe.model_fields_set and mine[section] != theirs[section]]
    if conflicts:
        raise ConfigError(
            f"the DPO recipe sets {', '.join(conflicts)}, but `from_run` {parent.path} decides those "
            "(the policy continues the SFT adapter on the same base)",
            hint=f"remove {', '.join(conflicts)} from the DPO recipe, or drop from_run to start from a base model",
        )
    return recipe.model_copy(update={section: getattr(parent.recipe, section) for section in INHERITED})
