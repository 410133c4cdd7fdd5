"""`lorakit dpo`: Direct Preference Optimization of a LoRA/QLoRA policy through TRL's DPOTrainer.

With `--from RUN` the policy starts from the SFT adapter (trainable) and the reference is the SFT model itself: TRL
1.16, given a PeftModel with a trainable adapter, adds a frozen "ref" copy of it and scores the reference through
that adapter, on the same base weights (no second copy of the model). Without `--from` the policy is a fresh adapter
and the reference is the base with adapters disabled. Either way the saved adapter is the whole policy and applies
directly to the base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lorakit.config import DPORecipe, inherit_from_parent, recipe_to_dict
from lorakit.console import err, info
from lorakit.errors import ConfigError
from lorakit.model import (
    ensure_pad_token,
    load_base_model,
    load_tokenizer,
    lora_config,
    parameter_counts,
    resolve_device,
    resolve_model_source,
    resolve_precision,
)
from lorakit.runs import Run, RunFolder, now, package_versions, read_run
from lorakit.train.common import check_report_to, execute, summarize_losses, training_kwargs
from lorakit.train.finish import write_adapter_run
from lorakit.train.sft import RunResult, check_resumable

SHOW_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def match_reference_dtype(model) -> None:
    """Give the frozen 'ref' adapter the dtype of the trainable one it copies.

    For 4-bit bases TRL casts trainable LoRA weights to bf16 (as the QLoRA paper does) after it made the fp32 'ref'
    copy: the SFT adapter was trained and saved in bf16, so the reference must compute in bf16 too, or policy and
    reference disagree before the first update.
    """
    params = dict(model.named_parameters())
    for name, param in params.items():
        twin = params.get(name.replace(".ref.", ".default."))
        if ".ref." in name and twin is not None and twin.dtype != param.dtype:
            param.data = param.data.to(twin.dtype)


def make_dpo_trainer_class():
    from trl import DPOTrainer

    class LorakitDPOTrainer(DPOTrainer):
        """DPOTrainer fed with data lorakit already tokenized, checked and truncated (prompts from the left)."""

        length_grouped = False

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _get_train_sampler(self, train_dataset=None):
            # Transformers' length grouping only knows `input_ids`; a DPO row is a prompt and two completions.
            if not self.length_grouped:
                return super()._get_train_sampler(train_dataset)
            from transformers.trainer_pt_utils import LengthGroupedSampler

            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(p) + max(len(c), len(r)) for p, c, r in
                       zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        dataset=dataset, lengths=lengths)

    return LorakitDPOTrainer


@dataclass
class DPOSetup:
    trainer: Any
    tokenizer: Any
    data: Any
    source: Any
    parent: Run | None
    recipe: DPORecipe
    device: str
    precision: str
    speed: dict[str, Any]
    trainable: int
    total: int
    estimate: Any  # lorakit.train.preflight.PreflightResult | None


def build_dpo_trainer(recipe: DPORecipe, run: RunFolder, callbacks: Sequence = ()) -> DPOSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from lorakit.data.preference import prepare_preference_data
    from lorakit.infer import base_source_of
    from lorakit.chat_template import resolve_chat_template
    from lorakit.train.preflight import preflight
    from lorakit.train.speed import choose_loss

    check_report_to(recipe.train.report_to)
    parent = read_run(recipe.from_run, expect_stage=("sft",)) if recipe.from_run else None
    if parent is not None:
        recipe = inherit_from_parent(recipe, parent)
        if not parent.has_adapter:
            raise ConfigError(f"{parent.path} has no adapter files", hint="re-run the SFT stage")
        source = base_source_of(parent)
        tokenizer = AutoTokenizer.from_pretrained(str(parent.path))  # the SFT run's tokenizer and chat template
        resolve_chat_template(tokenizer, None)
        ensure_pad_token(tokenizer)
    else:
        source = resolve_model_source(recipe.model.name_or_path, recipe.model.revision,
                                      recipe.model.trust_remote_code)
        tokenizer = load_tokenizer(source, recipe.model.trust_remote_code, recipe.model.chat_template)
    device = resolve_device()
    precision = resolve_precision(recipe.train.precision, device)
    with err.status("Preparing preference data..."):
        data = prepare_preference_data(recipe.data, recipe.dpo.max_prompt_length, tokenizer, recipe.train.seed)
    info(f"Data: {data.stats['rows']} pairs ({data.format} format, {data.stats['tokens']:,} tokens, "
         f"{data.stats['truncated']} truncated)" + (" [tokenization cached]" if data.cached else ""))
    estimate = preflight(recipe, device, enabled=recipe.preflight, model=source.location)
    precompute = recipe.dpo.precompute_ref_log_probs is True or bool(estimate and estimate.precompute_ref_log_probs)

    with err.status(f"Loading {source.name} ({recipe.method}, {precision}, {device})..."):
        model = load_base_model(source, recipe.method, recipe.qlora, precision, device,
                                recipe.model.attn_implementation, recipe.model.trust_remote_code)
        if recipe.method == "qlora":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=recipe.train.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_config = None
        if parent is not None:
            model = PeftModel.from_pretrained(model, str(parent.path), is_trainable=True)
        else:
            peft_config = lora_config(recipe.lora)

    loss, loss_reason = choose_loss(recipe.train.loss, device)
    args = DPOConfig(
        **training_kwargs(recipe.train, run, device, precision, recipe.method, data.eval is not None),
        beta=recipe.dpo.beta,
        loss_type=[recipe.dpo.loss_type],
        label_smoothing=recipe.dpo.label_smoothing,
        max_length=None,  # lorakit truncated prompts (left) and responses already
        precompute_ref_log_probs=precompute,
        dataset_num_proc=recipe.data.num_proc,
    )
    trainer_cls = make_dpo_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data.for_trainer(data.train),
        eval_dataset=data.for_trainer(data.eval) if data.eval is not None else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    # Padding-free DPO is disabled in TRL 1.16: group pairs of similar length instead, so batches carry little padding.
    trainer.length_grouped = True
    match_reference_dtype(trainer.model)
    if loss == "plain":
        from lorakit.train.plain_head import use_plain_lm_head

        if not use_plain_lm_head(trainer.model.get_base_model()):
            loss, loss_reason = "fused", "this model scales or soft-caps its logits: TRL's fused head handles that"
    reference = ("the SFT model (frozen 'ref' copy of its adapter)" if parent is not None
                 else "the base model (adapters disabled)")
    if precompute:
        reference += ", log-probs precomputed before training"
    speed = {"loss": loss, "why": loss_reason, "batching": "length-grouped pairs", "reference": reference}
    trainable, total = parameter_counts(trainer.model)
    info(f"Model: {total:,} parameters, {trainable:,} trainable; reference: {reference}; {loss} loss ({loss_reason})")
    return DPOSetup(trainer, tokenizer, data, source, parent, recipe, device, precision, speed, trainable, total,
                    estimate)


def run_dpo(recipe: DPORecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
            callbacks: Sequence = ()) -> RunResult:
    """Train a DPO policy adapter into the run folder `recipe.output_dir`."""
    run = RunFolder.open(recipe.output_dir, force=force, resume=resume,
                         inputs=[recipe.from_run] if recipe.from_run else ())
    if recipe.from_run:
        recipe = inherit_from_parent(recipe, read_run(recipe.from_run, expect_stage=("sft",)))
    check_resumable(run, recipe)
    setup = build_dpo_trainer(recipe, run, callbacks)
    run.begin()
    started = run.read_staged_manifest().get("started_at") or now()
    run.write_recipe(recipe_to_dict(recipe))
    parent = setup.parent
    manifest = {
        "stage": "dpo",
        "status": "running",
        "started_at": started,
        "versions": package_versions(),
        "base_model": {"name": setup.source.name, "location": setup.source.location,
                       "revision": setup.source.revision},
        "method": recipe.method,
        "device": setup.device,
        "precision": setup.precision,
        "speed": setup.speed,
        "dataset": {"source": setup.data.source, "format": setup.data.format, "fingerprint": setup.data.fingerprint,
                    **setup.data.stats},
        "parent": None if parent is None else {
            "path": str(Path(parent.path).resolve()),
            "stage": parent.stage,
            "finished_at": parent.manifest.get("finished_at"),
            "dataset": parent.manifest.get("dataset", {}).get("fingerprint"),
        },
        "trainable_parameters": setup.trainable,
        "total_parameters": setup.total,
        "vram_estimate": setup.estimate.metrics() if setup.estimate else None,
    }
    run.write_manifest(manifest)
    try:
        outcome = execute(setup.trainer, run, "DPO", SHOW_KEYS, resume_hint or "lorakit dpo ... --resume",
                          estimate=setup.estimate)
    except BaseException:
        run.abandon()
        raise
    summary: dict[str, Any] = {
        "run": str(run.path),
        "base_model": setup.source.name,
        "parent": manifest["parent"]["path"] if parent else None,
        "method": recipe.method,
        "pairs": setup.data.stats["rows"],
        "steps": outcome.global_step,
    }
    for key in ("loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies",
                "eval_rewards/margins"):
        summary.update({f"{k}".replace("rewards/", "reward_"): v
                        for k, v in summarize_losses(outcome.records, key).items()})
    summary["train_seconds"] = round(outcome.seconds, 1)
    manifest.update(status="complete", finished_at=now(), summary=summary)
    write_adapter_run(run, setup.trainer.model, setup.tokenizer, recipe, manifest)
    run.finish()
    return RunResult(run.path, summary)
