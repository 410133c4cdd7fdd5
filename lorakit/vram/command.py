"""`lorakit vram-estimate`: from the command's options to an EstimateReport (data; `render.render` prints it).

The estimate is for the run the user will start: a recipe (`--recipe`, or the defaults `lorakit sft` trains with),
changed by `--set section.key=value` like every command, then by the command's own flags. Each flag sets a recipe
field and is named after it (`--max-length` is `data.max_length`, `--optim` is `train.optim`); the estimator's older
names and spellings are accepted as aliases (`--seq-len`, `--optimizer paged-adamw-8bit`). A few flags reach beyond
what a recipe trains (full fine-tuning, inference, int8, adafactor...): the estimator plans those too.

A DPO recipe is estimated as it will run: with what it inherits from its SFT run, through
`lorakit.config.inherit_from_parent` (the one inheritance point), or, before that run exists, from the SFT recipe
beside it that writes it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from lorakit.config import (
    INHERITED,
    BaseRecipe,
    find_recipe,
    inherit_from_parent,
    load_recipe,
    precision_name,
    read_yaml,
)
from lorakit.errors import ConfigError, LorakitError
from lorakit.outputs import read_run
from lorakit.vram import estimate as est_mod
from lorakit.vram.catalog import GPU, GPUS, close_gpus, find_gpu
from lorakit.vram.plan import GpuVerdict, multi_gpu_comparisons, verdict
from lorakit.vram.resolve import OPTIM_NAMES, TARGET_NAMES, resolve_model, setup_from_recipe
from lorakit.vram.shapes import ModelShape
from lorakit.vram.sharding import STRATEGIES


@dataclass
class EstimateOptions:
    """What the command was given; a flag left None keeps the recipe's value (the defaults `lorakit sft` uses)."""

    model: str | None = None
    recipe: Path | None = None
    overrides: list[str] = field(default_factory=list)  # --set section.key=value
    method: str | None = None
    precision: str | None = None
    mixed_precision: bool | None = None
    max_length: int | None = None
    micro_batch_size: int | None = None
    gradient_checkpointing: bool | None = None
    optim: str | None = None
    lora_r: int | None = None
    target_modules: str | None = None
    attn_implementation: str | None = None
    loss: str | None = None
    stage: str | None = None
    double_quant: bool | None = None
    quant: str | None = None
    activation_offloading: bool | None = None
    optimizer_in_backward: bool | None = None
    num_processes: int | None = None
    strategy: str | None = None
    gpu: str | None = None


@dataclass(frozen=True)
class Flag:
    """One option of the command: the estimator's Setup field it sets, the recipe field it is (None: the estimator
    plans beyond recipes there), its names (the recipe's first, then the older aliases) and the spellings it takes."""

    setup_field: str
    names: tuple[str, ...]
    recipe_field: str | None
    values: dict[str, Any] | None = None  # accepted spelling -> the estimator's value; None: any, checked later
    shown: tuple[str, ...] = ()  # the spellings errors list (default: every accepted one)
    convert: Callable[[Any], Any] | None = None  # for values that are lists (target modules)

    @property
    def label(self) -> str:
        return "/".join(self.names) + (f" ({self.recipe_field})" if self.recipe_field else "")

    def to_setup(self, value: Any) -> Any:
        if self.convert is not None:
            return self.convert(value)
        if self.values is None:
            return value
        key = value.lower() if isinstance(value, str) else value
        if key not in self.values:
            shown = self.shown or tuple(self.values)
            closest = difflib.get_close_matches(str(value), shown, n=1, cutoff=0.0)
            raise ConfigError(f"{self.label}: {value!r} is not one of {', '.join(shown)}",
                              hint=f"{self.names[0]} {closest[0]}" if closest else None)
        return self.values[key]


def _targets(value: str) -> str:
    """lora.target_modules' names (q_proj,v_proj) or the estimator's (q,v): the estimator's."""
    if value.strip() in ("all-linear", "all"):
        return value.strip()
    return ",".join(TARGET_NAMES.get(part.strip(), part.strip()) for part in value.split(","))


def _identity(*names: str) -> dict[str, str]:
    return {name: name for name in names}


# Each accepts the recipe's spellings (listed in errors) and the estimator's older ones.
OPTIM_VALUES = {**OPTIM_NAMES, "adafactor": "adafactor", **_identity(*est_mod.OPTIMIZERS)}
PRECISION_VALUES = {"auto": "bf16", **_identity(*est_mod.DTYPE_BYTES),
                    **{alias: precision_name(alias) for alias in ("bfloat16", "float16", "float32")}}
ATTN_VALUES = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash", "flash": "flash"}
LOSS_VALUES = {"auto": "fused", **_identity(*est_mod.LOSSES)}

FLAGS: dict[str, Flag] = {
    "method": Flag("method", ("--method",), "method", _identity(*est_mod.METHODS)),
    "precision": Flag("dtype", ("--precision", "--dtype"), "train.precision", PRECISION_VALUES,
                      shown=("auto", *est_mod.DTYPE_BYTES)),
    "mixed_precision": Flag("mixed_precision", ("--mixed-precision/--pure",), None),
    "max_length": Flag("seq_len", ("--max-length", "--seq-len"), "data.max_length"),
    "micro_batch_size": Flag("batch_size", ("--micro-batch-size", "--batch-size"), "train.micro_batch_size"),
    "gradient_checkpointing": Flag("grad_checkpointing", ("--gradient-checkpointing", "--grad-checkpointing"),
                                   "train.gradient_checkpointing"),
    "optim": Flag("optimizer", ("--optim", "--optimizer"), "train.optim", OPTIM_VALUES,
                  shown=(*OPTIM_NAMES, "adafactor")),
    "lora_r": Flag("lora_r", ("--lora-r",), "lora.r"),
    "target_modules": Flag("lora_targets", ("--target-modules", "--lora-targets"), "lora.target_modules",
                           convert=_targets),
    "attn_implementation": Flag("attn", ("--attn-implementation", "--attn"), "model.attn_implementation",
                                ATTN_VALUES, shown=("sdpa", "eager", "flash_attention_2")),
    "loss": Flag("loss", ("--loss",), "train.loss", LOSS_VALUES),
    "stage": Flag("stage", ("--stage",), None, _identity(*est_mod.STAGES)),
    "double_quant": Flag("double_quant", ("--double-quant",), "qlora.double_quant"),
    "quant": Flag("quant", ("--quant",), "qlora.quant_type", _identity(*est_mod.QUANTS)),
    "activation_offloading": Flag("activation_offloading", ("--activation-offloading",),
                                  "train.activation_offloading"),
    "optimizer_in_backward": Flag("optimizer_in_backward", ("--optimizer-in-backward",), None),
    "num_processes": Flag("num_gpus", ("--num-processes", "--num-gpus"), "distributed.num_processes"),
    "strategy": Flag("strategy", ("--strategy",), "distributed.strategy", _identity(*STRATEGIES)),
}
# Setup fields only a recipe sets (through --set), for naming them in errors
RECIPE_ONLY = {"grad_accumulation": "train.gradient_accumulation_steps", "lora_dropout": "lora.dropout"}


@dataclass
class EstimateReport:
    shape: ModelShape
    source: str
    estimate: est_mod.Estimate
    verdicts: list[GpuVerdict] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = self.estimate.to_dict()
        data["shape"] = self.shape.describe()
        data["shape_source"] = self.source
        data["gpus"] = [v.to_dict() for v in self.verdicts]
        data["multi_gpu"] = self.comparisons
        return data


def recipe_for_estimate(path: Path, notes: list[str] | None = None, overrides: list[str] | None = None) -> BaseRecipe:
    """A training recipe as it will run: pipelines give their SFT section; DPO recipes inherit from their SFT run."""
    path = find_recipe(path)  # a file, or the name of a shipped recipe
    stage = read_yaml(path).get("stage", "sft")
    if not isinstance(stage, str):
        raise ConfigError(f"{path}: stage must be a string (got {stage!r})", hint="stage: sft, dpo or pipeline")
    if stage == "pipeline":
        recipe = load_recipe("pipeline", path, overrides)
        if recipe.sft is None:
            raise LorakitError(f"{path}: the pipeline has no sft section to estimate")
        return recipe.sft
    if stage not in ("sft", "dpo"):
        raise LorakitError(f"{path}: a '{stage}' recipe trains nothing", hint="give an sft, dpo or pipeline recipe")
    recipe = load_recipe(stage, path, overrides)
    if stage != "dpo" or not recipe.from_run:
        return recipe
    if Path(recipe.from_run).is_dir():
        return inherit_from_parent(recipe, read_run(recipe.from_run, expect_stage=("sft",)))
    # Planning before the SFT run exists: its recipe, beside this one, says what the DPO run will inherit.
    for candidate in sorted(path.parent.glob("*.y*ml")):
        try:
            text = read_yaml(candidate)
        except LorakitError:
            continue
        if text.get("stage") == "sft" and Path(str(text.get("output_dir", ""))) == Path(recipe.from_run):
            parent = load_recipe("sft", candidate)
            if notes is not None:
                notes.append(f"{recipe.from_run} does not exist yet: estimating with the settings of {candidate}, "
                             "which writes it")
            return recipe.model_copy(update={section: getattr(parent, section) for section in INHERITED})
    raise LorakitError(f"{path}: from_run {recipe.from_run} does not exist yet, and no SFT recipe beside it writes it",
                       hint="run the SFT stage first, or estimate the model directly: lorakit vram-estimate MODEL "
                            "--stage dpo")


def _gpus(name: str | None) -> list[GPU]:
    if name is None:
        return []
    if name.lower() == "all":
        return list(GPUS.values())
    found = find_gpu(name)
    if found is None:
        close = close_gpus(name)
        raise ConfigError(f"--gpu {name!r} is not in the GPU catalog",
                          hint=(f"did you mean {', '.join(close)}? " if close else "") + f"known: {', '.join(GPUS)}, "
                                                                                          "or all")
    return [found]


def _sets_model(overrides: list[str]) -> bool:
    return any(item.partition("=")[0].strip() in ("model.name_or_path", "sft.model.name_or_path")
               for item in overrides)


def estimate_setup(options: EstimateOptions, notes: list[str]) -> tuple[str, est_mod.Setup]:
    """The model name and the Setup: the recipe's (the given one, or the defaults `lorakit sft` trains with), then
    --set, then the flags."""
    overrides = list(options.overrides)
    if options.model is None and options.recipe is None and not _sets_model(overrides):
        raise ConfigError("give a model (name, folder or config.json) or --recipe",
                          hint="lorakit vram-estimate meta-llama/Llama-3.1-8B")
    if options.recipe is not None:
        recipe = recipe_for_estimate(options.recipe, notes, overrides)
    else:
        recipe = load_recipe("dpo" if (options.stage or "").startswith("dpo") else "sft", None, overrides)
    name, setup = setup_from_recipe(recipe)
    model = options.model or name
    changes = {flag.setup_field: flag.to_setup(getattr(options, key)) for key, flag in FLAGS.items()
               if getattr(options, key) is not None}
    setup = replace(setup, **changes)
    if setup.num_gpus > 1 and options.strategy is None and "distributed.strategy" not in " ".join(overrides):
        notes.append(f"{setup.num_gpus} GPUs with strategy {setup.strategy} (--strategy ddp|fsdp|zero2|zero3)")
    try:
        est_mod.check_setup(setup)
    except ValueError as exc:
        field_name, _, problem = str(exc).partition(": ")
        flag = next((f for f in FLAGS.values() if f.setup_field == field_name), None)
        where = flag.label if flag is not None else RECIPE_ONLY.get(field_name, field_name)
        raise ConfigError(f"{where}: {problem}", hint="see lorakit vram-estimate --help") from None
    return model, setup


def run_estimate(options: EstimateOptions) -> EstimateReport:
    notes: list[str] = []
    model, setup = estimate_setup(options, notes)
    gpus = _gpus(options.gpu)
    resolved = resolve_model(model)
    report = EstimateReport(resolved.shape, resolved.source, est_mod.estimate(resolved.shape, setup), notes=notes)
    report.verdicts = [verdict(resolved.shape, setup, g) for g in gpus]
    if len(gpus) > 1 and setup.stage != "inference":
        count = setup.num_gpus if setup.num_gpus > 1 else 2
        report.comparisons = multi_gpu_comparisons(resolved.shape, replace(setup, num_gpus=1), gpus, count)
    return report
