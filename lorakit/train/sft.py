"""`lorakit sft`: supervised fine-tuning of a LoRA/QLoRA adapter through TRL's SFTTrainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lorakit.config import SFTRecipe, recipe_to_dict
from lorakit.console import err, info
from lorakit.data.checks import lint_collated, raise_if_problems
from lorakit.data.sft import prepare_sft_data
from lorakit.model import (
    load_base_model,
    load_tokenizer,
    parameter_counts,
    resolve_device,
    resolve_model_source,
    resolve_precision,
    wrap_lora,
)
from lorakit.runs import RunFolder, now, package_versions
from lorakit.train.common import check_report_to, execute, summarize_losses, training_kwargs
from lorakit.train.finish import write_adapter_run
from lorakit.train.length_groups import length_grouped
from lorakit.train.speed import apply_loss_choice, plan_speed, trainer_speed_kwargs


@dataclass
class RunResult:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTSetup:
    """A ready SFTTrainer and what was decided on the way (for the manifest, the summary and benchmarks)."""

    trainer: Any
    tokenizer: Any
    data: Any
    source: Any
    device: str
    precision: str
    speed: Any
    trainable: int
    total: int
    estimate: Any  # lorakit.train.preflight.PreflightResult | None


def build_sft_trainer(recipe: SFTRecipe, run: RunFolder, callbacks: Sequence = ()) -> SFTSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    from trl import SFTConfig, SFTTrainer

    check_report_to(recipe.train.report_to)
    source = resolve_model_source(recipe.model.name_or_path, recipe.model.revision, recipe.model.trust_remote_code)
    device = resolve_device()
    precision = resolve_precision(recipe.train.precision, device)
    tokenizer = load_tokenizer(source, recipe.model.trust_remote_code, recipe.model.chat_template)
    with err.status("Preparing data..."):
        data = prepare_sft_data(recipe.data, tokenizer, recipe.train.seed)
    info(
        f"Data: {data.stats['rows']} examples ({data.format} format, {data.stats['trained_tokens']:,} trained of "
        f"{data.stats['tokens']:,} tokens, {data.stats['truncated']} truncated at {recipe.data.max_length})"
        + (" [tokenization cached]" if data.cached else "")
    )
    from lorakit.train.preflight import preflight

    estimate = preflight(recipe, device, enabled=recipe.preflight, model=source.location)

    with err.status(f"Loading {source.name} ({recipe.method}, {precision}, {device})..."):
        model = load_base_model(source, recipe.method, recipe.qlora, precision, device,
                                recipe.model.attn_implementation, recipe.model.trust_remote_code)
        model = wrap_lora(model, recipe, recipe.train.gradient_checkpointing)
    trainable, total = parameter_counts(model)
    info(f"Model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)")
    speed = plan_speed(recipe.train, device, model, len(tokenizer))

    args = SFTConfig(
        **training_kwargs(recipe.train, run, device, precision, recipe.method, data.eval is not None),
        **trainer_speed_kwargs(speed),
        max_length=None,  # examples are truncated (and linted) by lorakit before they get here
        packing=False,
        dataset_num_proc=recipe.data.num_proc,
    )
    trainer = length_grouped(SFTTrainer)(  # issue 20: group_by_length groups at any dataset size
        model=model,
        args=args,
        train_dataset=data.for_trainer(data.train),
        eval_dataset=data.for_trainer(data.eval) if data.eval is not None else None,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    apply_loss_choice(trainer, speed)
    tokens_per_batch = recipe.train.micro_batch_size * data.stats["tokens"] / max(data.stats["rows"], 1)
    info(f"Batches: {speed.reasons['batching']}, ~{tokens_per_batch:,.0f} tokens per micro-batch; "
         f"{speed.loss} loss ({speed.reasons['loss']})")
    raise_if_problems(lint_collated(trainer.data_collator, data.train, tokenizer.pad_token_id, tokenizer.eos_token_id))
    return SFTSetup(trainer, tokenizer, data, source, device, precision, speed, trainable, total, estimate)


def run_sft(recipe: SFTRecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
            callbacks: Sequence = ()) -> RunResult:
    """Train an SFT adapter into the run folder `recipe.output_dir`. `callbacks` are extra TrainerCallbacks."""
    run = RunFolder.open(recipe.output_dir, force=force, resume=resume)
    check_resumable(run, recipe)
    setup = build_sft_trainer(recipe, run, callbacks)
    trainer, tokenizer, data, source = setup.trainer, setup.tokenizer, setup.data, setup.source

    run.begin()
    started = run.read_staged_manifest().get("started_at") or now()
    run.write_recipe(recipe_to_dict(recipe))
    manifest = {
        "stage": "sft",
        "status": "running",
        "started_at": started,
        "versions": package_versions(),
        "base_model": {"name": source.name, "location": source.location, "revision": source.revision},
        "method": recipe.method,
        "device": setup.device,
        "precision": setup.precision,
        "speed": {"loss": setup.speed.loss, "padding_free": setup.speed.padding_free, "why": setup.speed.reasons},
        "dataset": {"source": data.source, "format": data.format, "fingerprint": data.fingerprint, **data.stats},
        "parent": None,
        "trainable_parameters": setup.trainable,
        "total_parameters": setup.total,
        "vram_estimate": setup.estimate.metrics() if setup.estimate else None,
    }
    run.write_manifest(manifest)
    try:
        outcome = execute(trainer, run, "SFT", ("loss",), resume_hint or "lorakit sft ... --resume",
                          estimate=setup.estimate)
    except BaseException:
        run.abandon()
        raise
    summary = {
        "run": str(run.path),
        "base_model": source.name,
        "method": recipe.method,
        "examples": data.stats["rows"],
        "steps": outcome.global_step,
        **summarize_losses(outcome.records, "loss"),
        **summarize_losses(outcome.records, "eval_loss"),
        "train_seconds": round(outcome.seconds, 1),
    }
    manifest.update(status="complete", finished_at=now(), summary=summary)
    write_adapter_run(run, trainer.model, tokenizer, recipe, manifest)
    run.finish()
    return RunResult(run.path, summary)


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
        from lorakit.errors import RunError

        raise RunError(
            f"cannot resume {run.path}: the recipe's {', '.join(changed)} section(s) differ from the interrupted run",
            hint="resume with the same recipe, or pass --force to start over",
        )
