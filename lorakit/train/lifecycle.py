"""One lifecycle for every adapter-training stage: open/resume -> build -> train -> finish.

SFT and DPO differ only in their data and their TRL trainer (`lorakit.train.sft`, `lorakit.train.dpo` supply those
as a `Stage`); everything else happens here, once: the parent run is read and inherited, the run folder is opened
(refusing anything that would lose work), the model is loaded and prepared through one path, the loss choice takes
effect, the manifest is written, training runs with progress/metrics/Ctrl-C/resume, and the finished run is renamed
into place.

Several processes (`lorakit.train.launch` starts them under accelerate) run this same lifecycle: each checks, loads
and trains; rank 0 alone opens, writes and finishes the run folder, and decides what all must agree on
(`lorakit.train.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.markup import escape

from lorakit.chat_families import TemplateChoice, added_token_ids
from lorakit.config import recipe_to_dict
from lorakit.console import err, info, warn
from lorakit.data.show import EXAMPLE_FILE, Explained, explain_example, print_explained
from lorakit.errors import ConfigError, RunError
from lorakit.eval.report import write_run_report_safely
from lorakit.runs import (ADAPTER_FILES, Run, RunFolder, base_source_of, now, package_versions, read_run,
                          write_json_atomic)
from lorakit.train.common import check_report_to, execute, summarize_losses
from lorakit.train.distributed import world
from lorakit.train.finish import write_adapter_run
from lorakit.train.keep import eval_turn, keep_callbacks, kept_record, overfit_warning


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
    plan: Any = None  # lorakit.train.strategies.Plan: processes and strategy
    template: Any = None  # lorakit.chat_families.TemplateChoice: which chat template, and why
    example: Any = None  # lorakit.data.show.Explained: the first training example, as the model sees it


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
    from lorakit.integrity import check_adapter

    parent = read_run(from_run, expect_stage=("sft",))
    if not parent.has_adapter:
        missing = [name for name in ADAPTER_FILES if not (parent.path / name).is_file()]
        raise ConfigError(f"run {parent.path} has no adapter: {', '.join(missing)} missing", hint="re-run the SFT stage")
    check_adapter(parent.path, f"run {parent.path}", finite=True)  # a diverged (NaN) policy would train nothing
    return inherit_from_parent(recipe, parent), parent


def inherited_template(parent: Run) -> TemplateChoice | None:
    """The chat template choice the parent run recorded, as this run inherits it (None for runs before the record)."""
    record = parent.manifest.get("chat_template")
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return None
    return TemplateChoice(record["name"], str(record.get("source", "")), str(record.get("reason", ""))).inherited(
        str(parent.path))


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
    if getattr(recipe, "_file", None) is not None:
        paths.append(recipe._file)  # the recipe file itself
    return paths


def build_setup(stage: Stage, recipe, run: RunFolder, callbacks: Sequence = (), parent: Run | None = None,
                parent_resolved: bool = False, plan=None) -> TrainerSetup:
    """Every check, then tokenizer, data, model and trainer: everything up to (not including) training."""
    from transformers import set_seed

    from lorakit.model import (ModelSource, load_policy, load_tokenizer_and_template, resolve_device,
                               resolve_model_source, resolve_precision)
    from lorakit.train import distributed
    from lorakit.train.kernels import plan_kernels
    from lorakit.train.preflight import preflight
    from lorakit.train.speed import apply_loss_choice

    if not parent_resolved:
        check_report_to(recipe.train.report_to)
        recipe, parent = with_parent(recipe)
    device = resolve_device()
    plan = plan or checked_plan(recipe, device)
    distributed.start(device)
    # Rank 0 first: building the built-in model and the tokenization cache once, the other processes read them.
    with distributed.main_first():
        if parent is not None:
            source = base_source_of(parent)
            # the SFT run's tokenizer, with the chat template it trained with
            tokenizer, template = load_tokenizer_and_template(ModelSource(str(parent.path), str(parent.path), True),
                                                              model=source)
            template = inherited_template(parent) or template
        else:
            source = resolve_model_source(recipe.model.name_or_path, recipe.model.revision,
                                          recipe.model.trust_remote_code)
            tokenizer, template = load_tokenizer_and_template(source, recipe.model.trust_remote_code,
                                                              recipe.model.chat_template)
        if distributed.world().is_main:
            info(template.line())
        precision = resolve_precision(recipe.train.precision, device)
        data = stage.prepare_data(recipe, tokenizer)
    example = show_first_example(recipe, tokenizer, template, data)
    estimate = preflight(recipe, device, enabled=recipe.preflight, model=source.location, plan=plan)

    with err.status(f"Loading {source.name} ({recipe.method}, {precision}, {device})..."):
        model, peft_config = load_policy(source, recipe, precision, device,
                                         parent.path if parent is not None else None, plan.strategy,
                                         len(tokenizer), added_token_ids(tokenizer, template))
    kernels = plan_kernels(recipe.train, device, model)  # Liger (CUDA) before the trainer wraps the model
    # A fresh adapter's A matrices are drawn from the global RNG when the trainer applies the LoRA config: seed it,
    # or the same recipe trains a different model.
    set_seed(recipe.train.seed)
    callbacks = [*callbacks, *keep_callbacks(recipe.train, data.eval is not None)]
    trainer, speed = stage.make_trainer(recipe, run, model, peft_config, tokenizer, data, device, precision,
                                        estimate, parent, list(callbacks))
    apply_loss_choice(trainer, speed)
    speed.liger, speed.reasons["liger"] = kernels["liger"]
    speed.compile, speed.reasons["compile"] = kernels["compile"]
    trainable, total = trainer.model.get_nb_trainable_parameters()
    info(f"Model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)"
         + (f"; reference: {speed.reference}" if speed.reference else "")
         + f"; {speed.loss} loss ({speed.reasons['loss']})")
    info(batch_line(trainer.args, plan, stage.rows))
    return TrainerSetup(trainer, tokenizer, data, source, parent, recipe, device, precision, speed, trainable, total,
                        estimate, plan, template, example)


def show_first_example(recipe, tokenizer, template, data) -> Explained | None:
    """Print the first training example as the model sees it (trained tokens marked), so a template or mask bug is
    seen before the run spends its time; the same function as `lorakit data check --show` (lorakit.data.show)."""
    if data.first_example is None:
        return None
    row, example = data.first_example
    dpo = getattr(recipe, "dpo", None)
    explained = explain_example(tokenizer, template, example, train_on=recipe.data.train_on,
                                max_length=recipe.data.max_length,
                                max_prompt_length=dpo.max_prompt_length if dpo is not None else None, row=row)
    if world().is_main:
        info(f"First training example (saved in the finished run as {EXAMPLE_FILE}):")
        print_explained(err, explained, compact=True)
    return explained


def checked_plan(recipe, device: str):
    """The processes and strategy this run trains with, refused before any weights load if they cannot work.

    In a process accelerate started, its environment says the strategy (so `accelerate launch -m lorakit` with
    any accelerate config is checked too); otherwise the recipe does (one process: the launcher never ran).
    """
    from importlib.util import find_spec

    from lorakit.train.distributed import world
    from lorakit.train.strategies import check_plan, launched_plan, plan_from_recipe

    me = world()
    plan = launched_plan(me.size) if me.distributed else plan_from_recipe(recipe)
    if not me.distributed and plan.distributed:
        plan = type(plan)(1, plan.strategy)  # called in-process (a test, a benchmark): one process trains
    asked = recipe.distributed.num_processes
    if me.distributed and me.is_main and asked > 1 and asked != me.size:
        from lorakit.console import warn

        warn(f"distributed.num_processes is {asked}, but the launcher started {me.size} processes: training on "
             f"{me.size}")
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    check_plan(recipe, plan, device, gpus, find_spec("deepspeed") is not None)
    return plan


def batch_line(args, plan, rows: str = "examples") -> str:
    """The global batch, as the trainer's accelerator sees the world (a mismatch with the launch is refused: a
    process that trains alone would silently change what max_steps and the learning rate mean)."""
    from lorakit.train.distributed import world

    size = world().size
    if args.world_size != size:
        raise RunError(f"accelerate set up {args.world_size} training process(es), but {size} were launched "
                       f"({plan.strategy}): each would train on its own", hint="launch with `lorakit sft ... "
                       "--num-processes N`, or check the accelerate config (distributed_type, use_cpu)")
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    line = f"Batch: {micro * accumulation * size} {rows} per optimizer step = micro-batch {micro} x accumulation "
    line += f"{accumulation}"
    if size > 1:
        line += f" x {size} processes ({plan.strategy}, {args.parallel_mode.value})"
    return line


def distributed_record(args, plan) -> dict[str, Any]:
    return {"processes": args.world_size, "strategy": plan.strategy if args.world_size > 1 else None,
            "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size}


def check_resumable(run: RunFolder, recipe, processes: int = 1) -> None:
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
    before = (run.read_staged_manifest().get("distributed") or {}).get("processes") or 1
    if before != processes:
        raise RunError(f"cannot resume {run.path}: it trained with {before} process(es), this run has {processes}",
                       hint=f"resume with --num-processes {before}, or pass --force to start over")


def open_run(recipe, parent: Run | None, force: bool, resume: bool, processes: int) -> RunFolder:
    run = RunFolder.open(recipe.output_dir, force=force, resume=resume, inputs=input_paths(recipe, parent))
    check_resumable(run, recipe, processes)
    return run


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
    from lorakit.model import resolve_device
    from lorakit.train import distributed

    check_report_to(recipe.train.report_to)
    recipe, parent = with_parent(recipe)
    device = resolve_device()
    plan = checked_plan(recipe, device)  # before the processes wait for each other: a refusal is one clean error
    warnings = serving_warnings(recipe)  # said by rank 0 only: the other processes' consoles are quiet
    distributed.start(device)
    me = distributed.world()
    # Rank 0 decides fresh or resume (and refuses what would lose work); everyone trains in the folder it chose.
    run = distributed.on_main(lambda: open_run(recipe, parent, force, resume, me.size))
    setup = build_setup(stage, recipe, run, callbacks, parent=parent, parent_resolved=True, plan=plan)

    if me.is_main:
        run.begin()
    distributed.barrier()  # the staging folder exists before any process saves a checkpoint into it
    started = run.read_staged_manifest().get("started_at") or now()
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
        "chat_template": setup.template.record() if setup.template is not None else None,
        "parent": parent_record(parent),
        "trainable_parameters": setup.trainable,
        "total_parameters": setup.total,
        "vram_estimate": setup.estimate.metrics() if setup.estimate else None,
        "distributed": distributed_record(setup.trainer.args, setup.plan),
        "warnings": warnings,
    }
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
    summary: dict[str, Any] = {"run": str(run.path), "base_model": source.name}
    if stage.takes_parent:
        summary["parent"] = manifest["parent"]["path"] if parent else None
    summary.update({"method": recipe.method, stage.rows: data.stats["rows"], "steps": outcome.global_step})
    for key in stage.summary_keys:
        summary.update({k.replace("rewards/", "reward_"): v for k, v in summarize_losses(outcome.records, key).items()})
    summary["train_seconds"] = round(outcome.seconds, 1)
    has_eval = data.eval is not None
    kept = kept_record(recipe.train, setup.trainer.state, outcome.records, has_eval)
    turn = eval_turn(outcome.records)
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
    manifest.update(status="complete", finished_at=now(), summary=summary, kept={**kept, "eval_turn": turn})
    if setup.example is not None:  # written with the finished run: a failed resume must add nothing
        write_json_atomic(run.staging / EXAMPLE_FILE, setup.example.to_json())
    write_adapter_run(run, setup.trainer.model, setup.tokenizer, recipe, manifest, state_dict)
    write_run_report_safely(run.staging, display=run.path)  # lands with the run; a drawing failure only warns
    run.finish()
    return RunResult(run.path, summary)
