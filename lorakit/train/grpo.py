"""`lorakit grpo`: Group Relative Policy Optimization of a LoRA/QLoRA policy through TRL's GRPOTrainer.

For each prompt the policy samples `grpo.num_generations` completions; the rewards (lorakit.rewards) score them; each
completion's advantage is its reward relative to its group's; the policy moves toward the better ones with PPO's
clipped ratio. With `--from RUN` (an SFT or DPO run) the policy continues that run's adapter and, when `beta > 0`,
the reference is that run itself (TRL adds a frozen "ref" copy of the adapter, as for DPO); without it the policy is a
fresh adapter on the base and the reference is the base with adapters disabled. `beta: 0` (the default, as in TRL)
skips the reference pass altogether.

Generation: transformers' `generate` by default; on a CUDA GPU with vLLM installed, vLLM in the same process (TRL's
colocate mode, its sleep mode when the estimate is tight). On the CPU lorakit generates with the LoRA weights merged
into the base for the duration of the call and prefills each group's shared prompt once (lorakit.train.grpo_generation).

This module supplies GRPO's data and trainer; the run itself is the shared lifecycle in `lorakit.train.lifecycle`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Sequence

from transformers import TrainerCallback

from lorakit import compat
from lorakit.chat_template import Stops
from lorakit.compat import attention_implementation
from lorakit.config import GRPORecipe
from lorakit.console import err, info
from lorakit.data.prepared import PreparedData
from lorakit.data.prompts import ROW_COLUMN, prepare_prompt_data
from lorakit.errors import ConfigError
from lorakit.io import write_text_atomic
from lorakit.model import resolve_device
from lorakit.outputs import RunFolder
from lorakit.outputs.layout import SAMPLES_FILE
from lorakit.rewards import Reward, TRLReward, check_rows_for, resolve_rewards, reward_files
from lorakit.rewards.builtin import reply_text
from lorakit.train.args import training_kwargs
from lorakit.train.distributed import world
from lorakit.train.grpo_generation import fast_generation_plan
from lorakit.train.lifecycle import RunResult, Stage, TrainerInputs, TrainerSetup, build_setup, train_adapter
from lorakit.train.speed import SpeedPlan, causal_lm_config, choose_loss

if TYPE_CHECKING:
    from transformers import Trainer

SHOW_KEYS = ("loss", "reward", "reward_std", "completions/mean_length", "kl")
SUMMARY_KEYS = ("reward", "completions/mean_length", "eval_reward")
GRPOSetup = TrainerSetup  # what build_grpo_trainer returns (kept as a name for benchmarks and tests)


@dataclass
class PromptData(PreparedData):
    """Prompt data and the rewards it was checked against (each column a reward reads is there and filled)."""

    rewards: list[Reward] = field(default_factory=list)
    stops: Stops | None = None  # which tokens end a completion (the model's generation config lists them for TRL)


def prepare_data(recipe: GRPORecipe, tokenizer, stops: Stops) -> PromptData:
    rewards = resolve_rewards(recipe.grpo.rewards, recipe.grpo.max_completion_length, resolve_device())
    with err.status("Preparing prompts..."):
        data = prepare_prompt_data(recipe.data, tokenizer, recipe.train.seed, recipe.grpo.max_completion_length,
                                   check_rows_for(rewards))
    columns = ", ".join(data.stats["columns"]) or "none"
    info(f"Data: {data.stats['rows']} prompts ({data.format} format, {data.stats['tokens']:,} prompt tokens, longest "
         f"{data.stats['max_length']}; columns for the rewards: {columns})")
    info("Rewards: " + ", ".join(r.describe() for r in rewards))
    return PromptData(**{f.name: getattr(data, f.name) for f in fields(data)}, rewards=rewards, stops=stops)


# ---------------------------------------------------------------------------------------------------------------
# Generation backend


def choose_generation(grpo, device: str, method: str, estimate) -> tuple[str, bool, str]:
    """(backend, vLLM sleep mode, why): transformers' generate, or vLLM colocated in the training process."""
    has_vllm = find_spec("vllm") is not None
    if grpo.generation == "vllm":
        if device != "cuda" or not has_vllm:
            missing = "a CUDA GPU" if device != "cuda" else "vllm (pip install vllm)"
            raise ConfigError(f"grpo.generation is vllm, which needs {missing}",
                              hint="set grpo.generation: auto (vLLM where it can run, transformers otherwise)")
        backend, why = "vllm", "set in the recipe"
    elif grpo.generation == "auto" and device == "cuda" and has_vllm and method == "lora":
        backend, why = "vllm", "auto: CUDA GPU with vllm installed"
    else:
        backend = "transformers"
        if grpo.generation == "transformers":
            why = "set in the recipe"
        elif device != "cuda":
            why = "auto: no CUDA GPU"
        elif not has_vllm:
            why = "auto: vllm is not installed"
        else:  # vLLM loads a 4-bit base only through its bitsandbytes support, which recent vLLM moved to a plugin
            why = "auto: QLoRA (vLLM would need its bitsandbytes plugin; generation: vllm to try it)"
    sleep = False
    if backend == "vllm":
        if grpo.vllm_enable_sleep_mode == "auto":
            sleep = bool(estimate and estimate.vllm_sleep)  # the preflight chose it when the run is tight
        else:
            sleep = bool(grpo.vllm_enable_sleep_mode)
    return backend, sleep, why


def describe_generation(backend: str, sleep: bool, grpo, fast: str | None) -> str:
    if backend == "vllm":
        return (f"vllm colocate ({grpo.vllm_gpu_memory_utilization:.0%} of the GPU"
                + (", sleep mode" if sleep else "") + ")")
    return "transformers generate" + (f" ({fast})" if fast else "")


# ---------------------------------------------------------------------------------------------------------------
# samples.jsonl


class SampleRecorder(TrainerCallback):
    """Writes a step's prompts, completions and rewards to samples.jsonl every `every` steps: what a user reads to see
    what the policy learned. The rewards report each scored batch here (TRLReward's on_scores); the batch of the
    step's first generation is written at the step's end (rank 0's share under several processes)."""

    def __init__(self, run: RunFolder, rewards: list[Reward], every: int, limit: int = 64):
        self.file = run.staging / SAMPLES_FILE
        self.rewards = rewards
        self.every = every
        self.limit = limit
        self.batch: dict[str, Any] | None = None
        self.scores: dict[str, list[float]] = {}
        self.written_step = -1

    def collect(self, name: str, batch: dict[str, Any], values: list[float]) -> None:
        # TRL scores one generation batch per optimizer step, every reward on the same list of completions; a batch
        # scored later in the step (evaluation) is not the step's
        if self.batch is None:
            self.batch, self.scores = batch, {}
        if batch["completions"] is self.batch["completions"]:
            self.scores[name] = values

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run trains again from its checkpoint: drop the samples of the steps after it.
        if not state.is_world_process_zero or not self.file.exists():
            return
        kept = []
        for line in self.file.read_text(errors="replace").splitlines():
            try:
                if json.loads(line).get("step", 0) <= state.global_step:
                    kept.append(line)
            except ValueError:
                continue  # a line torn by a kill
        write_text_atomic(self.file, "".join(line + "\n" for line in kept))

    def on_step_begin(self, args, state, control, **kwargs):
        self.batch, self.scores = None, {}

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        due = step % self.every == 0 or step == 1 or step >= state.max_steps
        if not due or not state.is_world_process_zero or self.batch is None or step == self.written_step:
            return
        if len(self.scores) != len(self.rewards):
            return
        self.written_step = step
        with open(self.file, "a") as handle:
            for record in sample_records(step, self.batch, self.scores, self.rewards)[:self.limit]:
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def sample_records(step: int, batch: dict[str, Any], scores: dict[str, list[float]],
                   rewards: list[Reward]) -> list[dict[str, Any]]:
    skip = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
    records = []
    for i, (prompt, completion) in enumerate(zip(batch["prompts"], batch["completions"])):
        values = {r.name: scores[r.name][i] for r in rewards}
        record = {"step": step, "row": batch.get(ROW_COLUMN, [None] * (i + 1))[i], "prompt": prompt_text(prompt),
                  "completion": reply_text(completion), "rewards": values,
                  "reward": sum(r.weight * values[r.name] for r in rewards)}
        for key, column in batch.items():
            if key not in skip and key != ROW_COLUMN and isinstance(column, list) and i < len(column):
                record[key] = column[i]
        records.append(record)
    return records


def prompt_text(prompt: Any) -> str:
    """The last user turn of a chat prompt (what the completion answers), or the prompt text itself."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


# ---------------------------------------------------------------------------------------------------------------
# Trainer


def eval_batch_size(micro: int, generations: int) -> int:
    """TRL needs each process's eval batch to hold whole groups."""
    return generations * max(1, math.ceil(micro / generations))


def make_trainer(inputs: TrainerInputs) -> tuple[Trainer, SpeedPlan]:
    from trl import GRPOConfig, GRPOTrainer  # TRL's trainer as it ships: lorakit adds callbacks and a generate wrapper

    recipe, data, tokenizer, model, device = inputs.recipe, inputs.data, inputs.tokenizer, inputs.model, inputs.device
    assert isinstance(data, PromptData)
    grpo = recipe.grpo
    processes = world().size
    per_step = recipe.train.micro_batch_size * recipe.train.gradient_accumulation_steps * processes
    if per_step % grpo.num_generations:
        raise ConfigError(f"{per_step} completions per step ({recipe.train.micro_batch_size} x "
                          f"{recipe.train.gradient_accumulation_steps} x {processes} processes) is not a multiple of "
                          f"grpo.num_generations ({grpo.num_generations})",
                          hint="change train.micro_batch_size or gradient_accumulation_steps so whole groups fit")
    backend, sleep, why = choose_generation(grpo, device, recipe.method, inputs.estimate)
    loss, loss_reason = choose_loss(recipe.train.loss, device)
    # Every token that ends an assistant turn ends a completion (TRL reads the model's generation config).
    stops = data.stops or Stops.of(tokenizer, model.generation_config.eos_token_id)
    model.generation_config.eos_token_id = stops.ids
    if recipe.train.activation_offloading and device == "cuda":
        raise ConfigError("train.activation_offloading is not available for GRPO (TRL 1.16's GRPOTrainer has none)",
                          hint="set train.activation_offloading: false; gradient checkpointing saves activation memory")
    kwargs = training_kwargs(recipe.train, inputs.run, device, inputs.precision, recipe.method,
                             data.eval is not None)
    kwargs.pop("activation_offloading")  # an SFT/DPO setting GRPOConfig does not have
    kwargs["per_device_eval_batch_size"] = eval_batch_size(recipe.train.micro_batch_size, grpo.num_generations)
    args = GRPOConfig(
        **kwargs,
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        top_p=grpo.top_p,
        top_k=grpo.top_k,
        beta=grpo.beta,
        loss_type=grpo.loss_type,
        epsilon=grpo.epsilon,
        epsilon_high=grpo.epsilon_high,
        scale_rewards=grpo.scale_rewards,
        mask_truncated_completions=grpo.mask_truncated_completions,
        reward_weights=[r.weight for r in data.rewards],
        use_vllm=backend == "vllm",
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=grpo.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=sleep,
        vllm_max_model_length=recipe.data.max_length if backend == "vllm" else None,
        remove_unused_columns=False,  # the rewards read the data's other columns
        log_completions=False,  # lorakit writes samples.jsonl itself
    )
    recorder = SampleRecorder(inputs.run, data.rewards, grpo.samples_steps)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[TRLReward(reward, recorder.collect) for reward in data.rewards],
        args=args,
        train_dataset=data.for_trainer(data.train),
        eval_dataset=data.for_trainer(data.eval) if data.eval is not None else None,
        processing_class=tokenizer,
        peft_config=inputs.peft_config,
        callbacks=[*inputs.callbacks, recorder],
    )
    compat.match_reference_adapter_dtype(trainer.model)
    fast = None
    if backend == "transformers":
        fast = fast_generation_plan(trainer.model, device, recipe.method, recipe.lora).apply()
    if grpo.beta == 0:
        reference = "none (beta 0: no reference pass)"
    elif inputs.parent is not None:
        reference = f"the {inputs.parent.stage.upper()} model (frozen 'ref' copy of its adapter)"
    else:
        reference = "the base model (adapters disabled)"
    generation = describe_generation(backend, sleep, grpo, fast)
    prompts_per_step = per_step // grpo.num_generations
    precision = inputs.precision + (" (this CPU computes in bf16 natively; train.precision: fp32 to choose)"
                                    if device == "cpu" and inputs.precision == "bf16" else "")
    info(f"GRPO: {prompts_per_step} prompt(s) x {grpo.num_generations} completions per step, <= "
         f"{grpo.max_completion_length} tokens each at temperature {grpo.temperature:g}; {grpo.loss_type} loss, beta "
         f"{grpo.beta:g}; {precision}; generation: {generation} ({why})")
    speed = SpeedPlan(loss=loss, padding_free=False, group_by_length=False,
                      reasons={"loss": loss_reason, "batching": "groups of completions (left-padded prompts)",
                               "attention": attention_implementation(causal_lm_config(model)), "generation": why},
                      reference=reference, attention=attention_implementation(causal_lm_config(model)),
                      temperature=grpo.temperature, generation=generation)
    return trainer, speed


GRPO = Stage(name="grpo", label="GRPO", rows="prompts", show_keys=SHOW_KEYS, summary_keys=SUMMARY_KEYS,
             prepare_data=prepare_data, make_trainer=make_trainer, continues=("sft", "dpo"), batch_unit="completions",
             reads=lambda recipe: reward_files(recipe.grpo.rewards), turn_metric=None, cpu_bf16=True)


def build_grpo_trainer(recipe: GRPORecipe, run: RunFolder, callbacks: Sequence = ()) -> TrainerSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    return build_setup(GRPO, recipe, run, callbacks)


def run_grpo(recipe: GRPORecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
             callbacks: Sequence = ()) -> RunResult:
    """Train a GRPO policy adapter into the run folder `recipe.output_dir`."""
    return train_adapter(GRPO, recipe, force, resume, resume_hint, callbacks)
