"""One lifecycle for every adapter-training stage: open/resume -> build -> train -> finish.

SFT and DPO differ only in their data and their TRL trainer (`lorakit.train.sft`, `lorakit.train.dpo` supply those
as a `Stage`); everything else happens here, once: the parent run is read and inherited, the run folder is opened
(refusing anything that would lose work), the model is loaded and prepared through one path, the loss choice takes
effect, the manifest is written, training runs with progress/metrics/Ctrl-C/resume, and the finished run is renamed
into place. Multi-process training plugs in here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lorakit.config import recipe_to_dict
from lorakit.console import err, info
from lorakit.errors import ConfigError, RunError
from lorakit.eval.report import write_run_report_safely
from lorakit.runs import Run, RunFolder, base_source_of, now, package_versions, read_run
from lorakit.train.common import check_report_to, execute, summarize_losses
from lorakit.train.finish import write_adapter_run


@dataclass
class RunResult:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerSetup:
    """A ready trainer and what was decided on the way (for the manifest, the summary and benchmarks)."""

    trainer: Any
    tokenizer: Any
    data: Any  # lorakit.data.prepared.PreparedData
    source: Any  # lorakit.model.ModelSource
    parent: Run | None
    recipe: Any  # the recipe as it runs (DPO: with the sections inherited from its SFT run)
    device: str
    precision: str
    speed: Any  # lorakit.train.speed.SpeedPlan
    trainable: int
    total: int
    estimate: Any  # lorakit.train.preflight.PreflightResult | None


@dataclass(frozen=True)
class Stage:
    """What a training stage supplies to the lifecycle."""

    name: str  # sft | dpo (the manifest's stage)
    label: str  # for progress lines
    rows: str  # what a data row is called in the summary: examples | pairs
    show_keys: tuple[str, ...]  # logged values shown in the progress line
    summary_keys: tuple[str, ...]  # logged values summarized as first_/final_
    # (recipe, tokenizer) -> PreparedData, after printing its one-line description
    prepare_data: Callable[[Any, Any], Any]
    # (recipe, run, model, peft_config, tokenizer, data, device, precision, estimate, parent, callbacks)
    #   -> (trainer, SpeedPlan)
    make_trainer: Callable[..., tuple[Any, Any]]
    takes_parent: bool = False


def with_parent(recipe) -> tuple[Any, Run | None]:
    """The one place a run's parent is read: a DPO recipe with from_run takes model, method, LoRA and quantization
    from that SFT run (lorakit.config.inherit_from_parent)."""
    from lorakit.config import inherit_from_parent

    from_run = getattr(recipe, "from_run", None)
    if not from_run:
        return recipe, None
    parent = read_run(from_run, expect_stage=("sft",))
    if not parent.has_adapter:
        raise ConfigError(f"{parent.path} has no adapter files", hint="re-run the SFT stage")
    return inherit_from_parent(recipe, parent), parent


def input_paths(recipe, parent: Run | None) -> list[Path]:
    """Everything a training run reads from disk: an output that is or holds one of them is never replaced."""
    paths = [Path(p) for p in (recipe.data.train, recipe.data.eval) if p and Path(p).exists()]
    template = recipe.model.chat_template
    if template and "{" not in template and Path(template).expanduser().exists():
        paths.append(Path(template).expanduser())
    if Path(recipe.model.name_or_path).expanduser().exists():
        paths.append(Path(recipe.model.name_or_path).expanduser())
    if parent is not None:
        paths.append(parent.path)
    return paths


def build_setup(stage: Stage, recipe, run: RunFolder, callbacks: Sequence = (), parent: Run | None = None,
                parent_resolved: bool = False) -> TrainerSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    from transformers import set_seed

    from lorakit.model import (ModelSource, load_policy, load_tokenizer, resolve_device, resolve_model_source,
                               resolve_precision)
    from lorakit.train.kernels import plan_kernels
    from lorakit.train.preflight import preflight
    from lorakit.train.speed import apply_loss_choice

    if not parent_resolved:
        check_report_to(recipe.train.report_to)
        recipe, parent = with_parent(recipe)
    if parent is not None:
        source = base_source_of(parent)
        # the SFT run's tokenizer, with the chat template it trained with
        tokenizer = load_tokenizer(ModelSource(str(parent.path), str(parent.path), True), model=source)
    else:
        source = resolve_model_source(recipe.model.name_or_path, recipe.model.revision,
                                      recipe.model.trust_remote_code)
        tokenizer = load_tokenizer(source, recipe.model.trust_remote_code, recipe.model.chat_template)
    device = resolve_device()
    precision = resolve_precision(recipe.train.precision, device)
    data = stage.prepare_data(recipe, tokenizer)
    estimate = preflight(recipe, device, enabled=recipe.preflight, model=source.location)

    with err.status(f"Loading {source.name} ({recipe.method}, {precision}, {device})..."):
        model, peft_config = load_policy(source, recipe, precision, device,
                                         parent.path if parent is not None else None)
    kernels = plan_kernels(recipe.train, device, model)  # Liger (CUDA) before the trainer wraps the model
    # A fresh adapter's A matrices are drawn from the global RNG when the trainer applies the LoRA config: seed it,
    # or the same recipe trains a different model.
    set_seed(recipe.train.seed)
    trainer, speed = stage.make_trainer(recipe, run, model, peft_config, tokenizer, data, device, precision,
                                        estimate, parent, list(callbacks))
    apply_loss_choice(trainer, speed)
    speed.liger, speed.reasons["liger"] = kernels["liger"]
    speed.compile, speed.reasons["compile"] = kernels["compile"]
    trainable, total = trainer.model.get_nb_trainable_parameters()
    info(f"Model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"
         + (f"; reference: {speed.reference}" if speed.reference else "")
         + f"; {speed.loss} loss ({speed.reasons['loss']})")
    return TrainerSetup(trainer, tokenizer, data, source, parent, recipe, device, precision, speed, trainable, total,
                        estimate)


def check_resumable(run: RunFolder, recipe) -> None:
    """A resumed run must train the same model on the same data; length and learning knobs may change."""
    if run.mode != "resume":
        return
    staged = run.read_staged_recipe()
    if staged is None:
        return
    current = recipe_to_dict(recipe)
    changed = [key for key in ("method", "model", "lora", "qlora", "data") if staged.get(key) != current.get(key)]
    if changed:
        raise RunError(
            f"cannot resume {run.path}: the recipe's {', '.join(changed)} section(s) differ from the interrupted run",
            hint="resume with the same recipe, or pass --force to start over",
        )


def serving_warnings(recipe) -> list[str]:
    """Settings PEFT trains but a server will not load (lorakit.export.servable), said once before training."""
    from rich.markup import escape

    from lorakit.console import warn
    from lorakit.export.servable import servability_warning

    line = servability_warning(recipe.lora)
    if line is None:
        return []
    warn(escape(line))
    return [line]


def parent_record(parent: Run | None) -> dict[str, Any] | None:
    if parent is None:
        return None
    return {"path": str(Path(parent.path).resolve()), "stage": parent.stage,
            "finished_at": parent.manifest.get("finished_at"),
            "dataset": parent.manifest.get("dataset", {}).get("fingerprint")}


def train_adapter(stage: Stage, recipe, force: bool = False, resume: bool = False, resume_hint: str = "",
                  callbacks: Sequence = ()) -> RunResult:
    """Train an adapter into the run folder `recipe.output_dir`. `callbacks` are extra TrainerCallbacks."""
    check_report_to(recipe.train.report_to)
    recipe, parent = with_parent(recipe)
    warnings = serving_warnings(recipe)
    run = RunFolder.open(recipe.output_dir, force=force, resume=resume, inputs=input_paths(recipe, parent))
    check_resumable(run, recipe)
    setup = build_setup(stage, recipe, run, callbacks, parent=parent, parent_resolved=True)

    run.begin()
    started = run.read_staged_manifest().get("started_at") or now()
    run.write_recipe(recipe)
    data, source = setup.data, setup.source
    manifest = {
        "stage": stage.name,
        "status": "running",
        "started_at": started,
        "versions": package_versions(),
        "base_model": source.record(),
        "method": recipe.method,
        "device": setup.device,
        "precision": setup.precision,
        "optimizer": str(getattr(setup.trainer.args.optim, "value", setup.trainer.args.optim)),
        "speed": setup.speed.to_manifest(),
        "dataset": {"source": data.source, "format": data.format, "fingerprint": data.fingerprint, **data.stats},
        "parent": parent_record(parent),
        "trainable_parameters": setup.trainable,
        "total_parameters": setup.total,
        "vram_estimate": setup.estimate.metrics() if setup.estimate else None,
        "warnings": warnings,
    }
    run.write_manifest(manifest)
    try:
        outcome = execute(setup.trainer, run, stage.label, stage.show_keys,
                          resume_hint or f"lorakit {stage.name} ... --resume", estimate=setup.estimate)
    except BaseException:
        run.abandon()
        raise
    summary: dict[str, Any] = {"run": str(run.path), "base_model": source.name}
    if stage.takes_parent:
        summary["parent"] = manifest["parent"]["path"] if parent else None
    summary.update({"method": recipe.method, stage.rows: data.stats["rows"], "steps": outcome.global_step})
    for key in stage.summary_keys:
        summary.update({k.replace("rewards/", "reward_"): v for k, v in summarize_losses(outcome.records, key).items()})
    summary["train_seconds"] = round(outcome.seconds, 1)
    if warnings:
        summary["warnings"] = warnings
    manifest.update(status="complete", finished_at=now(), summary=summary)
    write_adapter_run(run, setup.trainer.model, setup.tokenizer, recipe, manifest)
    write_run_report_safely(run.staging, display=run.path)  # lands with the run; a drawing failure only warns
    run.finish()
    return RunResult(run.path, summary)
