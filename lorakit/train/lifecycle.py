"""One lifecycle for every adapter-training stage: prepare -> build -> train -> finish.

A stage (SFT, DPO, ...) differs only in its data and its TRL trainer: `lorakit.train.sft` and `lorakit.train.dpo`
supply those as a `Stage`. Everything else happens here, once:

- prepare: the parent run is read and inherited, the device and the processes/strategy are decided and checked
  (before anything loads, so a refusal is one clean error);
- build: tokenizer and stop tokens, data, memory preflight, model (one path for every stage), then the stage's
  trainer, with the loss choice in effect;
- train: the run folder is opened (refusing anything that would lose work), the manifest written, and training runs
  with progress, metrics, Ctrl-C and resume (`lorakit.train.loop`);
- finish: adapter, tokenizer, generation config, card and report are written and the run is renamed into place.

Several processes (`lorakit.train.launch` starts them under accelerate) run this same lifecycle: each checks, loads
and trains; rank 0 alone opens, writes and finishes the run folder, and decides what all must agree on
(`lorakit.train.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from rich.markup import escape

from lorakit.chat_families import TemplateChoice, added_token_ids
from lorakit.chat_template import Stops, generation_eos_ids
from lorakit.config import BaseRecipe, inherit_from_parent, recipe_to_dict
from lorakit.console import err, info, warn
from lorakit.data.prepared import PreparedData
from lorakit.data.show import EXAMPLE_FILE, Explained, explain_example, print_explained
from lorakit.errors import ConfigError, RunError
from lorakit.export.servable import servability_warning
from lorakit.io import write_json_atomic
from lorakit.model import (
    ModelSource,
    base_source_of,
    choose_kbit_upcast,
    load_policy,
    load_tokenizer_and_template,
    resolve_device,
    resolve_model_source,
    resolve_precision,
)
from lorakit.outputs import Run, RunFolder, now, package_versions, read_run
from lorakit.outputs.integrity import check_adapter
from lorakit.outputs.layout import ADAPTER_FILES
from lorakit.outputs.manifest import KeptRecord, ParentRecord, TrainingRunManifest, training_manifest
from lorakit.report import write_run_report_safely
from lorakit.train import distributed
from lorakit.train.args import check_report_to
from lorakit.train.finish import write_adapter_run
from lorakit.train.keep import eval_turn, keep_callbacks, kept_record, overfit_warning
from lorakit.train.kernels import plan_kernels
from lorakit.train.loop import execute, summarize_losses
from lorakit.train.preflight import PreflightResult, preflight
from lorakit.train.speed import SpeedPlan, apply_loss_choice
from lorakit.train.strategies import Plan, check_plan, launched_plan, plan_from_recipe
from lorakit.train.tiling import plan_tiling
from lorakit.train.token_batches import row_tokens

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback


@dataclass
class RunResult:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# What a stage supplies, and what it is given


@dataclass(frozen=True)
class TrainerInputs:
    """Everything a stage's trainer is built from: the lifecycle has loaded and checked all of it."""

    recipe: BaseRecipe  # as it runs (DPO: with the sections inherited from its SFT run)
    run: RunFolder
    model: PreTrainedModel  # the base (4-bit for QLoRA), with the parent's adapter when continuing a run
    peft_config: LoraConfig | None  # the LoRA to attach; None when the model already carries the parent's adapter
    tokenizer: PreTrainedTokenizerBase
    data: PreparedData
    device: str
    precision: str  # bf16 | fp16 | fp32
    estimate: PreflightResult | None
    parent: Run | None
    callbacks: tuple[TrainerCallback, ...] = ()


@dataclass(frozen=True)
class Stage:
    """What a training stage supplies to the lifecycle. A new stage is a module that defines one of these (its data
    and its trainer) and a line in lorakit.train.stages."""

    name: str  # sft | dpo | grpo: the recipe's and the manifest's stage
    label: str  # for progress lines
    rows: str  # what a data row is called in the summary: examples | pairs | prompts
    show_keys: tuple[str, ...]  # logged values shown in the progress line
    summary_keys: tuple[str, ...]  # logged values summarized as first_/final_
    # (recipe, tokenizer, stops) -> the stage's tokenized, checked data, after printing its one-line description
    prepare_data: Callable[[BaseRecipe, PreTrainedTokenizerBase, Stops], PreparedData]
    # the trainer, and how it computes its loss and batches its rows
    make_trainer: Callable[[TrainerInputs], tuple[Trainer, SpeedPlan]]
    continues: tuple[str, ...] = ()  # the stages whose runs its recipe's from_run may name (DPO: sft)
    batch_unit: str = ""  # what micro_batch_size counts, when it is not `rows` (GRPO: completions)
    # files a run reads besides its data, model, chat template, parent and recipe (GRPO: its reward files)
    reads: Callable[[BaseRecipe], list[Path]] = lambda recipe: []
    # the held-out loss whose turn (lowest, then rising) the summary reports; GRPO has none: its loss is a
    # policy-gradient surrogate whose value says nothing about fit (it keeps its best step by eval_reward instead)
    turn_metric: str | None = "eval_loss"
    # train.precision auto takes bf16 on a CPU with native bf16 (GRPO: 1.5-1.9x faster there, bench/grpo_throughput.py)
    cpu_bf16: bool = False

    @property
    def takes_parent(self) -> bool:
        return bool(self.continues)


@dataclass
class TrainerSetup:
    """A ready trainer and what was decided on the way (for the manifest, the summary and benchmarks)."""

    trainer: Trainer
    tokenizer: PreTrainedTokenizerBase
    stops: Stops  # which tokens end a reply: the data was labelled with them, the generation config lists them
    data: PreparedData
    source: ModelSource  # the base model
    parent: Run | None
    recipe: BaseRecipe  # as it runs (DPO: with the sections inherited from its SFT run)
    device: str
    precision: str
    speed: SpeedPlan
    trainable: int
    total: int
    estimate: PreflightResult | None
    plan: Plan  # processes and strategy
    template: TemplateChoice | None = None  # which chat template, and why
    example: Explained | None = None  # the first training example, as the model sees it


# ---------------------------------------------------------------------------------------------------------------
# prepare


@dataclass(frozen=True)
class Prepared:
    """Decided once, before anything loads: the recipe as it runs, the run it continues, the device, the plan."""

    recipe: BaseRecipe
    parent: Run | None
    device: str
    plan: Plan


def prepare(stage: Stage, recipe: BaseRecipe) -> Prepared:
    """Every check that needs no weights: loggers installed, the parent run readable, the plan possible here."""
    check_report_to(recipe.train.report_to)
    recipe, parent = with_parent(recipe, stage.continues)
    device = resolve_device()
    return Prepared(recipe, parent, device, checked_plan(recipe, device))


def with_parent(recipe: BaseRecipe, continues: tuple[str, ...] = ("sft",)) -> tuple[BaseRecipe, Run | None]:
    """The one place a run's parent is read: a recipe with from_run (a run of one of the `continues` stages) takes
    model, method, LoRA and quantization from that run (lorakit.config.inherit_from_parent)."""
    from_run = getattr(recipe, "from_run", None)
    if not from_run:
        return recipe, None
    parent = read_run(from_run, expect_stage=continues)
    if not parent.has_adapter:
        missing = [name for name in ADAPTER_FILES if not (parent.path / name).is_file()]
        raise ConfigError(f"run {parent.path} has no adapter: {', '.join(missing)} missing",
                          hint=f"re-run the {parent.stage.upper()} stage")
    check_adapter(parent.path, f"run {parent.path}", finite=True)  # a diverged (NaN) policy would train nothing
    return inherit_from_parent(recipe, parent), parent


def inherited_template(parent: Run) -> TemplateChoice | None:
    """The chat template choice the parent run recorded, as this run inherits it (None for runs before the record)."""
    record = parent.manifest.chat_template
    if record is None:
        return None
    return TemplateChoice(record.name, record.source or "", record.reason or "").inherited(str(parent.path))


def checked_plan(recipe: BaseRecipe, device: str) -> Plan:
    """The processes and strategy this run trains with, refused before any weights load if they cannot work.

    In a process accelerate started, its environment says the strategy (so `accelerate launch -m lorakit` with
    any accelerate config is checked too); otherwise the recipe does (one process: the launcher never ran).
    """
    me = distributed.world()
    plan = launched_plan(me.size) if me.distributed else plan_from_recipe(recipe)
    if not me.distributed and plan.distributed:
        plan = Plan(1, plan.strategy)  # called in-process (a test, a benchmark): one process trains
    asked = recipe.distributed.num_processes
    if me.distributed and me.is_main and asked > 1 and asked != me.size:
        warn(f"distributed.num_processes is {asked}, but the launcher started {me.size} processes: training on "
             f"{me.size}")
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    check_plan(recipe, plan, device, gpus, find_spec("deepspeed") is not None)
    return plan


def input_paths(stage: Stage, recipe: BaseRecipe, parent: Run | None) -> list[Path]:
    """Everything a training run reads from disk: an output that is or holds one of them is never replaced."""
    paths = [Path(p) for p in (recipe.data.train, recipe.data.eval) if p and Path(p).exists()]
    template = recipe.model.chat_template
    if template and "{" not in template and Path(template).expanduser().exists():
        paths.append(Path(template).expanduser())
    if Path(recipe.model.name_or_path).expanduser().exists():
        paths.append(Path(recipe.model.name_or_path).expanduser())
    if parent is not None:
        paths.append(parent.path)
    if getattr(recipe, "_file", None) is not None:
        paths.append(recipe._file)  # the recipe file itself
    return paths + stage.reads(recipe)


def check_resumable(run: RunFolder, recipe: BaseRecipe, processes: int = 1) -> None:
    """A resumed run must train the same model on the same data, with the same number of processes (the global
    batch, and with it every later step, depends on it); length and learning knobs may change."""
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
    staged_manifest = run.read_staged_manifest()
    before = staged_manifest.processes if staged_manifest is not None else 1
    if before != processes:
        raise RunError(f"cannot resume {run.path}: it trained with {before} process(es), this run has {processes}",
                       hint=f"resume with --num-processes {before}, or pass --force to start over")


def open_run(stage: Stage, recipe: BaseRecipe, parent: Run | None, force: bool, resume: bool,
             processes: int) -> RunFolder:
    run = RunFolder.open(recipe.output_dir, force=force, resume=resume, inputs=input_paths(stage, recipe, parent))
    check_resumable(run, recipe, processes)
    return run


def serving_warnings(recipe: BaseRecipe) -> list[str]:
    """Settings PEFT trains but a server will not load (lorakit.export.servable), said once before training."""
    line = servability_warning(recipe.lora)
    if line is None:
        return []
    warn(escape(line))
    return [line]


# ---------------------------------------------------------------------------------------------------------------
# build


def build_setup(stage: Stage, recipe: BaseRecipe, run: RunFolder, callbacks: Sequence = ()) -> TrainerSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    return build(stage, prepare(stage, recipe), run, callbacks)


def build(stage: Stage, prepared: Prepared, run: RunFolder, callbacks: Sequence = ()) -> TrainerSetup:
    """Tokenizer, stop tokens, data, memory preflight, model and the stage's trainer, for a prepared run."""
    from transformers import set_seed

    recipe, parent, device, plan = prepared.recipe, prepared.parent, prepared.device, prepared.plan
    distributed.start(device)
    # Rank 0 first: building the built-in model and the tokenization cache once, the other processes read them.
    with distributed.main_first():
        if parent is not None:
            source = base_source_of(parent)
            # the SFT run's tokenizer, with the chat template it trained with
            tokenizer, template = load_tokenizer_and_template(ModelSource(str(parent.path), str(parent.path), True))
            template = inherited_template(parent) or template
        else:
            source = resolve_model_source(recipe.model.name_or_path, recipe.model.revision,
                                          recipe.model.trust_remote_code)
            tokenizer, template = load_tokenizer_and_template(source, recipe.model.trust_remote_code,
                                                              recipe.model.chat_template)
        if distributed.world().is_main:
            info(template.line())
        # The base's own list of stop tokens (GLM-4.x lists <|user|>, Llama 3.1 <|eom_id|>) decides, with the
        # template, which token ends an assistant turn.
        stops = Stops.of(tokenizer, generation_eos_ids(source.location, source.revision))
        precision = resolve_precision(recipe.train.precision, device, stage.cpu_bf16)
        data = stage.prepare_data(recipe, tokenizer, stops)
    example = show_first_example(recipe, tokenizer, template, data, stops)
    estimate = preflight(recipe, device, enabled=recipe.preflight, model=source.location, plan=plan)

    with err.status(f"Loading {source.name} ({recipe.method}, {precision}, {device})..."):
        model, peft_config = load_policy(source, recipe, precision, device,
                                         parent.path if parent is not None else None, plan.strategy,
                                         len(tokenizer), added_token_ids(tokenizer, template))
    kernels = plan_kernels(recipe.train, device, model)  # Liger (CUDA) before the trainer wraps the model
    # after Liger: the tiles wrap whatever forward the MLPs then have
    rows = row_tokens(recipe, stage.name, device, estimate.device_gib if estimate else None, plan.num_processes)
    tiling = plan_tiling(recipe.train.tiled_mlp, recipe, model, device, precision, plan.strategy, rows)
    # A fresh adapter's A matrices are drawn from the global RNG when the trainer applies the LoRA config: seed it,
    # or the same recipe trains a different model.
    set_seed(recipe.train.seed)
    callbacks = (*callbacks, *keep_callbacks(recipe.train, data.eval is not None))
    trainer, speed = stage.make_trainer(TrainerInputs(recipe, run, model, peft_config, tokenizer, data, device,
                                                      precision, estimate, parent, tuple(callbacks)))
    apply_loss_choice(trainer, speed)
    speed.liger, speed.reasons["liger"] = kernels["liger"]
    speed.compile, speed.reasons["compile"] = kernels["compile"]
    speed.tiled_mlp, speed.tile_tokens, speed.reasons["tiled_mlp"] = tiling
    if recipe.method == "qlora":
        speed.kbit_upcast, speed.reasons["kbit_upcast"] = kbit_upcast_choice(recipe, precision, plan.strategy)
    info(memory_line(speed))
    trainable, total = trainer.model.get_nb_trainable_parameters()
    info(f"Model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"
         + (f"; reference: {speed.reference}" if speed.reference else "")
         + f"; {speed.loss} loss ({speed.reasons['loss']})")
    info(batch_line(trainer.args, plan, stage.batch_unit or stage.rows, speed.micro_batch_tokens))
    return TrainerSetup(trainer, tokenizer, stops, data, source, parent, recipe, device, precision, speed, trainable,
                        total, estimate, plan, template, example)


def show_first_example(recipe: BaseRecipe, tokenizer, template: TemplateChoice, data: PreparedData,
                       stops: Stops) -> Explained | None:
    """Print the first training example as the model sees it (trained tokens marked), so a template or mask bug is
    seen before the run spends its time; the same function as `lorakit data check --show` (lorakit.data.show)."""
    if data.first_example is None:
        return None
    row, example = data.first_example
    dpo = getattr(recipe, "dpo", None)
    explained = explain_example(tokenizer, template, example, train_on=recipe.data.train_on,
                                max_length=recipe.data.max_length,
                                max_prompt_length=dpo.max_prompt_length if dpo is not None else None, row=row,
                                stops=stops)
    if distributed.world().is_main:
        info(f"First training example (saved in the finished run as {EXAMPLE_FILE}):")
        print_explained(err, explained, compact=True)
    return explained


def kbit_upcast_choice(recipe: BaseRecipe, precision: str, strategy: str) -> tuple[bool, str]:
    if strategy == "fsdp":
        return False, "fsdp: the k-bit preparation is skipped (one dtype per flattened unit)"
    return choose_kbit_upcast(recipe.qlora.upcast_to_fp32, precision)


def memory_line(speed: SpeedPlan) -> str:
    """The run's long-sequence memory choices, as its first lines say them."""
    line = f"Long sequences: tiled MLP {'on' if speed.tiled_mlp else 'off'} ({speed.reasons['tiled_mlp']})"
    if speed.kbit_upcast is not None:
        line += f"; 4-bit base: {'fp32' if speed.kbit_upcast else 'no fp32'} upcast ({speed.reasons['kbit_upcast']})"
    return line


def batch_line(args, plan: Plan, rows: str = "examples", token_budget: int | None = None) -> str:
    """The global batch, as the trainer's accelerator sees the world (a mismatch with the launch is refused: a
    process that trains alone would silently change what max_steps and the learning rate mean)."""
    size = distributed.world().size
    if args.world_size != size:
        raise RunError(f"accelerate set up {args.world_size} training process(es), but {size} were launched "
                       f"({plan.strategy}): each would train on its own", hint="launch with `lorakit sft ... "
                       "--num-processes N`, or check the accelerate config (distributed_type, use_cpu)")
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    line = f"Batch: {micro * accumulation * size} {rows} per optimizer step = micro-batch {micro} x accumulation "
    line += f"{accumulation}"
    if token_budget:
        line = (f"Batch: {micro * accumulation * size} {rows} per optimizer step, in forward passes of up to "
                f"{token_budget:,} tokens (padding-free; train.micro_batch_tokens)")
    if size > 1:
        line += f" x {size} processes ({plan.strategy}, {args.parallel_mode.value})"
    return line


# ---------------------------------------------------------------------------------------------------------------
# train and finish


def distributed_record(args, plan: Plan) -> dict[str, Any]:
    return {"processes": args.world_size, "strategy": plan.strategy if args.world_size > 1 else None,
            "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size}


def parent_record(parent: Run | None) -> ParentRecord | None:
    return parent.parent_record() if parent is not None else None


def running_manifest(stage: Stage, setup: TrainerSetup, started: str, warnings: list[str]) -> TrainingRunManifest:
    """The manifest a run carries while it trains (finish adds the summary)."""
    data, recipe = setup.data, setup.recipe
    return training_manifest(stage.name)(
        stage=stage.name,
        status="running",
        started_at=started,
        versions=package_versions(),
        base_model=setup.source.record(),
        method=recipe.method,
        device=setup.device,
        precision=setup.precision,
        optimizer=str(getattr(setup.trainer.args.optim, "value", setup.trainer.args.optim)),
        speed=setup.speed.to_manifest(),
        long_sequences=setup.speed.long_sequences(),
        dataset={"source": data.source, "format": data.format, "fingerprint": data.fingerprint, **data.stats},
        parent=parent_record(setup.parent),
        trainable_parameters=setup.trainable,
        total_parameters=setup.total,
        vram_estimate=setup.estimate.metrics() if setup.estimate else None,
        distributed=distributed_record(setup.trainer.args, setup.plan),
        warnings=warnings,
        chat_template=setup.template.record() if setup.template is not None else None,
    )


def train_adapter(stage: Stage, recipe: BaseRecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
                  callbacks: Sequence = ()) -> RunResult:
    """Train an adapter into the run folder `recipe.output_dir`. `callbacks` are extra TrainerCallbacks."""
    prepared = prepare(stage, recipe)  # before the processes wait for each other: a refusal is one clean error
    recipe, parent = prepared.recipe, prepared.parent
    warnings = serving_warnings(recipe)  # said by rank 0 only: the other processes' consoles are quiet
    distributed.start(prepared.device)
    me = distributed.world()
    # Rank 0 decides fresh or resume (and refuses what would lose work); everyone trains in the folder it chose.
    run = distributed.on_main(lambda: open_run(stage, recipe, parent, force, resume, me.size))
    setup = build(stage, prepared, run, callbacks)

    if me.is_main:
        run.begin()
    distributed.barrier()  # the staging folder exists before any process saves a checkpoint into it
    staged = run.read_staged_manifest()
    started = (staged.started_at if staged is not None else None) or now()
    manifest = running_manifest(stage, setup, started, warnings)
    if me.is_main:
        run.write_recipe(recipe)
        run.write_manifest(manifest)
    try:
        outcome = execute(setup.trainer, run, stage.label, stage.show_keys,
                          resume_hint or f"lorakit {stage.name} ... --resume", estimate=setup.estimate)
    except BaseException:
        if me.is_main:
            run.abandon()
        raise
    # FSDP / ZeRO-3 hold shards of the adapter: every process takes part in gathering it, rank 0 writes it.
    state_dict = distributed.full_state_dict(setup.trainer)
    if not me.is_main:
        return RunResult(run.path, {})
    summary: dict[str, Any] = {"run": str(run.path), "base_model": setup.source.name}
    if stage.takes_parent:
        summary["parent"] = manifest.parent.path if manifest.parent is not None else None
    summary.update({"method": recipe.method, stage.rows: setup.data.stats["rows"], "steps": outcome.global_step})
    for key in stage.summary_keys:
        summary.update({k.replace("rewards/", "reward_"): v for k, v in summarize_losses(outcome.records, key).items()})
    summary["train_seconds"] = round(outcome.seconds, 1)
    kept = kept_record(recipe.train, setup.trainer.state, outcome.records, setup.data.eval is not None)
    turn = eval_turn(outcome.records, stage.turn_metric) if stage.turn_metric else None
    summary["kept_step"] = kept["step"]
    if turn is not None:
        summary["eval_loss_min"], summary["eval_loss_min_step"] = turn["min"], turn["min_step"]
    info(f"Kept: the adapter of step {kept['step']} ({kept['why']})")
    overfit = overfit_warning(turn, kept)
    if overfit and "keep" in recipe.train.model_fields_set:
        info(escape(f"Note: {overfit.split(': the adapter kept')[0]} (train.keep: last, as the recipe says)"))
    elif overfit:  # the default kept the last step: say what that cost
        warn(escape(overfit))
        warnings.append(overfit)
    if warnings:
        summary["warnings"] = warnings
    manifest = manifest.completed(finished_at=now(), summary=summary, kept=KeptRecord(**kept, eval_turn=turn))
    if setup.example is not None:  # written with the finished run: a failed resume must add nothing
        write_json_atomic(run.staging / EXAMPLE_FILE, setup.example.to_json())
    write_adapter_run(run, setup.trainer.model, setup.tokenizer, recipe, manifest, state_dict, setup.stops)
    write_run_report_safely(run.staging, display=run.path)  # lands with the run; a drawing failure only warns
    run.finish()
    return RunResult(run.path, summary)
