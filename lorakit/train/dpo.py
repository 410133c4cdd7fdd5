"""`lorakit dpo`: Direct Preference Optimization of a LoRA/QLoRA policy through TRL's DPOTrainer.

With `--from RUN` the policy starts from the SFT adapter (trainable) and the reference is the SFT model itself: TRL
1.16, given a PeftModel with a trainable adapter, adds a frozen "ref" copy of it and scores the reference through
that adapter, on the same base weights (no second copy of the model). Without `--from` the policy is a fresh adapter
and the reference is the base with adapters disabled. Either way the saved adapter is the whole policy and applies
directly to the base model.

This module supplies DPO's data and trainer; the run itself is the shared lifecycle in `lorakit.train.lifecycle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from lorakit import compat
from lorakit.chat_template import Stops
from lorakit.config import DPORecipe
from lorakit.console import err, info
from lorakit.data.preference import prepare_preference_data
from lorakit.data.prepared import PreparedData
from lorakit.outputs import RunFolder
from lorakit.train.args import training_kwargs
from lorakit.train.length_groups import grouped_sampler
from lorakit.train.lifecycle import RunResult, Stage, TrainerInputs, TrainerSetup, build_setup, train_adapter
from lorakit.train.packed_pairs import causal_lm_of, plan_packed_pairs
from lorakit.train.plain_head import use_plain_lm_head
from lorakit.train.speed import SpeedPlan, choose_loss

if TYPE_CHECKING:
    from transformers import Trainer

SHOW_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
SUMMARY_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies",
                "eval_rewards/margins")
DPOSetup = TrainerSetup  # what build_dpo_trainer returns (kept as a name for benchmarks and tests)


def make_dpo_trainer_class(plain_head: bool = False):
    """lorakit's DPOTrainer. `plain_head`: the run uses lorakit's plain LM head (the CPU default), which must
    already score the reference log-probs that TRL precomputes inside its constructor."""
    from trl import DPOTrainer

    class LorakitDPOTrainer(DPOTrainer):
        """DPOTrainer fed with data lorakit already tokenized, checked and truncated (prompts from the left), and
        whose padded pairs are grouped by length (transformers' grouping only knows `input_ids`)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if compat.is_pretokenized_preferences(dataset):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            # TRL scores the precomputed reference in its constructor, right after patching in its fused head and
            # before lorakit's loss choice could take effect: swap the head first, or the reference is scored by
            # another kernel than the policy and the first step's rewards are rounding noise instead of exactly 0.
            if plain_head:
                use_plain_lm_head(causal_lm_of(self.model), want_sq_probs=bool(self.use_weighting))
            return super()._precompute_ref_logps(dataset, name, batch_size)

        length_grouped = True  # False when pairs are packed: a packed batch carries no padding to avoid

        def _get_train_sampler(self, train_dataset=None):
            if not self.length_grouped:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(p) + max(len(c), len(r)) for p, c, r in
                       zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
            return grouped_sampler(self.args, lengths)  # groups at any dataset size

    compat.check_trainer_hooks(LorakitDPOTrainer)
    return LorakitDPOTrainer


def prepare_data(recipe: DPORecipe, tokenizer, stops: Stops) -> PreparedData:
    with err.status("Preparing preference data..."):
        data = prepare_preference_data(recipe.data, recipe.dpo.max_prompt_length, tokenizer, recipe.train.seed, stops)
    info(f"Data: {data.stats['rows']} pairs ({data.format} format, {data.stats['tokens']:,} tokens, "
         f"{data.stats['truncated']} truncated)" + (" [tokenization cached]" if data.cached else ""))
    return data


def make_trainer(inputs: TrainerInputs) -> tuple[Trainer, SpeedPlan]:
    from trl import DPOConfig

    recipe, data, tokenizer, model = inputs.recipe, inputs.data, inputs.tokenizer, inputs.model
    # Padding-free pairs where the probe passes, decided before the trainer is built: TRL precomputes reference
    # log-probs in its constructor, with the collator it is given. Otherwise TRL's padded collator and length-grouped
    # pairs.
    packing = plan_packed_pairs(model, tokenizer, recipe.train.padding_free, recipe.model.attn_implementation,
                                compiled=recipe.train.compile)
    loss, loss_reason = choose_loss(recipe.train.loss, inputs.device)
    estimate = inputs.estimate
    precompute = recipe.dpo.precompute_ref_log_probs is True or bool(estimate and estimate.precompute_ref_log_probs)
    args = DPOConfig(
        **training_kwargs(recipe.train, inputs.run, inputs.device, inputs.precision, recipe.method,
                          data.eval is not None),
        beta=recipe.dpo.beta,
        loss_type=[recipe.dpo.loss_type],
        label_smoothing=recipe.dpo.label_smoothing,
        max_length=None,  # lorakit truncated prompts (left) and responses already
        precompute_ref_log_probs=precompute,
        dataset_num_proc=recipe.data.num_proc,
    )
    trainer = make_dpo_trainer_class(plain_head=loss == "plain")(
        model=model,
        args=args,
        train_dataset=data.for_trainer(data.train),
        eval_dataset=data.for_trainer(data.eval) if data.eval is not None else None,
        processing_class=tokenizer,
        peft_config=inputs.peft_config,
        callbacks=list(inputs.callbacks),
        data_collator=packing.collator,
    )
    trainer.length_grouped = not packing.enabled
    compat.match_reference_adapter_dtype(trainer.model)
    reference = ("the SFT model (frozen 'ref' copy of its adapter)" if inputs.parent is not None
                 else "the base model (adapters disabled)")
    if precompute:
        reference += ", log-probs precomputed before training"
    speed = SpeedPlan(loss=loss, padding_free=packing.enabled, group_by_length=not packing.enabled,
                      reasons={"loss": loss_reason, "batching": packing.reason, "attention": packing.attention_reason},
                      reference=reference, attention=packing.attention)
    return trainer, speed


DPO = Stage(name="dpo", label="DPO", rows="pairs", show_keys=SHOW_KEYS, summary_keys=SUMMARY_KEYS,
            prepare_data=prepare_data, make_trainer=make_trainer, continues=("sft",))


def build_dpo_trainer(recipe: DPORecipe, run: RunFolder, callbacks: Sequence = ()) -> TrainerSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    return build_setup(DPO, recipe, run, callbacks)


def run_dpo(recipe: DPORecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
            callbacks: Sequence = ()) -> RunResult:
    """Train a DPO policy adapter into the run folder `recipe.output_dir`."""
    return train_adapter(DPO, recipe, force, resume, resume_hint, callbacks)
