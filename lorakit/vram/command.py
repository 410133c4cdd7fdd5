"""`lorakit vram-estimate`: from the command's options to an EstimateReport (data; `report.render` prints it).

The model comes from a name, folder, config.json or a recipe; a recipe's settings are the starting point and flags
override them. A DPO recipe is estimated as it will run: with what it inherits from its SFT run, through
`lorakit.config.inherit_from_parent` (the one inheritance point), or, before that run exists, from the SFT recipe
beside it that writes it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError, LorakitError
from lorakit.vram import estimate as est_mod
from lorakit.vram.catalog import GPU, GPUS, close_gpus, find_gpu
from lorakit.vram.context import ContextRow, max_context
from lorakit.vram.plan import GpuVerdict, multi_gpu_comparisons, verdict
from lorakit.vram.resolve import resolve_model, setup_from_recipe
from lorakit.vram.shapes import ModelShape
from lorakit.vram.sharding import STRATEGIES


@dataclass
class EstimateOptions:
    """Every flag of the command; None means "the recipe's value, else the estimator's default"."""

    model: str | None = None
    recipe: Path | None = None
    method: str | None = None
    dtype: str | None = None
    mixed_precision: bool | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    grad_checkpointing: bool | None = None
    optimizer: str | None = None
    lora_r: int | None = None
    lora_targets: str | None = None
    attn: str | None = None
    loss: str | None = None
    stage: str | None = None
    double_quant: bool | None = None
    quant: str | None = None
    activation_offloading: bool | None = None
    optimizer_in_backward: bool | None = None
    num_gpus: int | None = None
    strategy: str | None = None
    gpu: str | None = None
    tiled_mlp: bool | None = None
    upcast_to_fp32: bool | None = None
    max_context: bool = False


# flag name -> Setup field, for the options that map one to one
_SETUP_FIELDS = ("method", "dtype", "mixed_precision", "seq_len", "batch_size", "grad_checkpointing", "optimizer",
                 "lora_r", "lora_targets", "attn", "loss", "stage", "double_quant", "quant", "activation_offloading",
                 "optimizer_in_backward", "num_gpus", "strategy", "tiled_mlp")


@dataclass
class EstimateReport:
    shape: ModelShape
    source: str
    estimate: est_mod.Estimate
    verdicts: list[GpuVerdict] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    contexts: list[tuple[GPU, list[ContextRow]]] = field(default_factory=list)  # --max-context, per GPU

    def to_dict(self) -> dict[str, Any]:
        data = self.estimate.to_dict()
        data["shape"] = self.shape.describe()
        data["shape_source"] = self.source
        data["gpus"] = [v.to_dict() for v in self.verdicts]
        data["multi_gpu"] = self.comparisons
        if self.contexts:
            data["max_context"] = [{"gpu": gpu.key, "name": gpu.name, "memory_gib": gpu.memory_gib,
                                    "rows": [row.to_dict() for row in rows]} for gpu, rows in self.contexts]
        return data


def recipe_for_estimate(path: Path, notes: list[str] | None = None):
    """A training recipe as it will run: pipelines give their SFT section; DPO recipes inherit from their SFT run."""
    from lorakit.config import INHERITED, find_recipe, inherit_from_parent, load_recipe, read_yaml

    path = find_recipe(path)  # a file, or the name of a shipped recipe
    stage = read_yaml(path).get("stage", "sft")
    if not isinstance(stage, str):
        raise ConfigError(f"{path}: stage must be a string (got {stage!r})", hint="stage: sft, dpo or pipeline")
    if stage == "pipeline":
        recipe = load_recipe("pipeline", path)
        if recipe.sft is None:
            raise LorakitError(f"{path}: the pipeline has no sft section to estimate")
        return recipe.sft
    if stage not in ("sft", "dpo"):
        raise LorakitError(f"{path}: a '{stage}' recipe trains nothing", hint="give an sft, dpo or pipeline recipe")
    recipe = load_recipe(stage, path)
    if stage != "dpo" or not recipe.from_run:
        return recipe
    if Path(recipe.from_run).is_dir():
        from lorakit.runs import read_run

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


def check_choice(name: str, value, allowed) -> None:
    if value is not None and value not in allowed:
        closest = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.0)
        raise ConfigError(f"--{name} {value!r} is not one of {', '.join(allowed)}", hint=f"--{name} {closest[0]}")


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


def build_setup(options: EstimateOptions, notes: list[str]) -> tuple[str, est_mod.Setup]:
    """The model name and the Setup: the recipe's (if any), then the flags."""
    if options.model is None and options.recipe is None:
        raise ConfigError("give a model (name, folder or config.json) or --recipe",
                          hint="lorakit vram-estimate meta-llama/Llama-3.1-8B")
    setup = est_mod.lorakit_defaults()
    model = options.model
    if options.recipe is not None:
        name, setup = setup_from_recipe(recipe_for_estimate(options.recipe, notes))
        model = model or name
    check_choice("method", options.method, est_mod.METHODS)
    check_choice("dtype", options.dtype, tuple(est_mod.DTYPE_BYTES))
    check_choice("optimizer", options.optimizer, est_mod.OPTIMIZERS)
    check_choice("attn", options.attn, est_mod.ATTENTION)
    check_choice("loss", options.loss, est_mod.LOSSES)
    check_choice("stage", options.stage, est_mod.STAGES)
    check_choice("quant", options.quant, est_mod.QUANTS)
    check_choice("strategy", options.strategy, STRATEGIES)
    changes = {name: getattr(options, name) for name in _SETUP_FIELDS if getattr(options, name) is not None}
    if options.upcast_to_fp32 is not None:
        changes["upcast_non_quantized"] = "all" if options.upcast_to_fp32 else "none"
    setup = replace(setup, **changes)
    if setup.num_gpus > 1 and options.strategy is None and "strategy" not in changes:
        notes.append(f"{setup.num_gpus} GPUs with strategy {setup.strategy} (--strategy ddp|fsdp|zero2|zero3)")
    try:
        est_mod.check_setup(setup)
    except ValueError as exc:
        field_name, _, problem = str(exc).partition(": ")
        raise ConfigError(f"--{field_name.replace('_', '-')}: {problem}", hint="see lorakit vram-estimate --help")
    return model, setup


def run_estimate(options: EstimateOptions) -> EstimateReport:
    notes: list[str] = []
    model, setup = build_setup(options, notes)
    gpus = _gpus(options.gpu)
    if options.max_context and not gpus:
        raise ConfigError("--max-context needs a GPU to fill", hint="add --gpu rtx4090 (or any GPU name, or all)")
    if options.max_context and setup.stage == "inference":
        raise ConfigError("--max-context answers for training stages", hint="drop --stage inference")
    resolved = resolve_model(model)
    report = EstimateReport(resolved.shape, resolved.source, est_mod.estimate(resolved.shape, setup), notes=notes)
    report.verdicts = [verdict(resolved.shape, setup, g) for g in gpus]
    if len(gpus) > 1 and setup.stage != "inference":
        count = setup.num_gpus if setup.num_gpus > 1 else 2
        report.comparisons = multi_gpu_comparisons(resolved.shape, replace(setup, num_gpus=1), gpus, count)
    if options.max_context:
        report.contexts = [(g, max_context(resolved.shape, setup, g)) for g in gpus]
    return report


def option_names() -> list[str]:
    return [f.name for f in fields(EstimateOptions)]
