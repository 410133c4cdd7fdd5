"""`lorakit sft`: supervised fine-tuning of a LoRA/QLoRA adapter through TRL's SFTTrainer.

This module supplies SFT's data and trainer; the run itself (folder, model, manifest, training, finishing) is the
shared lifecycle in `lorakit.train.lifecycle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from lorakit.chat_template import Stops
from lorakit.config import SFTRecipe
from lorakit.console import err, info
from lorakit.data.checks import lint_collated, raise_if_problems
from lorakit.data.prepared import PreparedData
from lorakit.data.sft import prepare_sft_data
from lorakit.outputs import RunFolder
from lorakit.train.args import training_kwargs
from lorakit.train.length_groups import length_grouped
from lorakit.train.lifecycle import RunResult, Stage, TrainerInputs, TrainerSetup, build_setup, train_adapter
from lorakit.train.speed import SpeedPlan, plan_speed, trainer_speed_kwargs

if TYPE_CHECKING:
    from transformers import Trainer

SFTSetup = TrainerSetup  # what build_sft_trainer returns (kept as a name for benchmarks and tests)


def prepare_data(recipe: SFTRecipe, tokenizer, stops: Stops) -> PreparedData:
    with err.status("Preparing data..."):
        data = prepare_sft_data(recipe.data, tokenizer, recipe.train.seed, stops)
    info(
        f"Data: {data.stats['rows']} examples ({data.format} format, {data.stats['trained_tokens']:,} trained of "
        f"{data.stats['tokens']:,} tokens, {data.stats['truncated']} truncated at {recipe.data.max_length})"
        + (" [tokenization cached]" if data.cached else "")
    )
    return data


def make_trainer(inputs: TrainerInputs) -> tuple[Trainer, SpeedPlan]:
    from trl import SFTConfig, SFTTrainer

    recipe, data, tokenizer = inputs.recipe, inputs.data, inputs.tokenizer
    speed = plan_speed(recipe.train, inputs.device, inputs.model, len(tokenizer), recipe.model.attn_implementation)
    args = SFTConfig(
        **training_kwargs(recipe.train, inputs.run, inputs.device, inputs.precision, recipe.method,
                          data.eval is not None),
        **trainer_speed_kwargs(speed),
        max_length=None,  # examples are truncated (and linted) by lorakit before they get here
        packing=False,
        dataset_num_proc=recipe.data.num_proc,
    )
    trainer = length_grouped(SFTTrainer)(  # group_by_length that groups at any dataset size
        model=inputs.model,
        args=args,
        train_dataset=data.for_trainer(data.train),
        eval_dataset=data.for_trainer(data.eval) if data.eval is not None else None,
        processing_class=tokenizer,
        peft_config=inputs.peft_config,
        callbacks=list(inputs.callbacks),
    )
    tokens_per_batch = recipe.train.micro_batch_size * data.stats["tokens"] / max(data.stats["rows"], 1)
    info(f"Batches: {speed.reasons['batching']}, ~{tokens_per_batch:,.0f} tokens per micro-batch; attention: "
         f"{speed.reasons['attention']}")
    raise_if_problems(lint_collated(trainer.data_collator, data.train, tokenizer.pad_token_id, tokenizer.eos_token_id))
    return trainer, speed


SFT = Stage(name="sft", label="SFT", rows="examples", show_keys=("loss",), summary_keys=("loss", "eval_loss"),
            prepare_data=prepare_data, make_trainer=make_trainer)


def build_sft_trainer(recipe: SFTRecipe, run: RunFolder, callbacks: Sequence = ()) -> TrainerSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    return build_setup(SFT, recipe, run, callbacks)


def run_sft(recipe: SFTRecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
            callbacks: Sequence = ()) -> RunResult:
    """Train an SFT adapter into the run folder `recipe.output_dir`. `callbacks` are extra TrainerCallbacks."""
    return train_adapter(SFT, recipe, force, resume, resume_hint, callbacks)
