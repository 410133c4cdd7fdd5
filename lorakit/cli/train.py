"""Training commands: one per stage (sft, dpo) from one definition of their options, the pipeline (`run`), and the
memory estimate of a run (`vram-estimate`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from lorakit.cli.app import command, state
from lorakit.cli.options import (
    AccelerateConfigOpt,
    DataOpt,
    EpochsOpt,
    ForceOpt,
    JsonOpt,
    LrOpt,
    MaxStepsOpt,
    ModelOpt,
    NoPreflightOpt,
    NumProcessesOpt,
    OutputOpt,
    PrintConfigOpt,
    RecipeOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    StrategyOpt,
)
from lorakit.cli.output import print_config, print_run_summary


@dataclass(frozen=True)
class TrainingCommand:
    """A training stage's command. Every one takes TRAINING_OPTIONS; a stage that continues another run takes
    --from too. A new stage (grpo) is one more entry in TRAINING_COMMANDS."""

    stage: str  # the recipe's stage and the name in lorakit.train.stages
    title: str  # the summary table's
    help: str
    from_help: str | None = None  # --from: what the stage continues; None: it starts from a base model only


TRAINING_COMMANDS = (
    TrainingCommand(
        "sft", "SFT run",
        help="Supervised fine-tuning of a LoRA/QLoRA adapter.\n\n"
        "Examples:\n\n"
        "  lorakit sft --recipe recipes/tiny-cpu-sft.yaml\n\n"
        "  lorakit sft --model ./my-model --data chats.jsonl --output-dir out/sft\n\n"
        "  lorakit sft -r recipes/qwen2.5-7b-qlora-sft.yaml --set lora.r=32 --max-steps 200\n\n"
        "  lorakit sft -r recipes/tiny-cpu-sft.yaml --num-processes 2          # 2 processes (DDP)\n\n"
        "  lorakit sft -r recipes/llama3.1-8b-qlora-sft.yaml -n 4 --strategy fsdp"),
    TrainingCommand(
        "dpo", "DPO run",
        help="Direct Preference Optimization of a LoRA/QLoRA adapter, continuing from an SFT run.\n\n"
        "Examples:\n\n"
        "  lorakit dpo --from out/sft --data prefs.jsonl --output-dir out/dpo\n\n"
        "  lorakit dpo --recipe recipes/tiny-cpu-dpo.yaml\n\n"
        "  lorakit dpo --model ./base --data prefs.jsonl --output-dir out/dpo-from-base\n\n"
        "  lorakit dpo --from out/sft --data prefs.jsonl -o out/dpo --num-processes 2",
        from_help="SFT run folder to continue from."),
)

# (parameter, option, default): the options of every training command, in the order --help lists them (--from, where
# a stage takes it, comes right after --recipe). Those named in lorakit.config.FLAG_FIELDS set that recipe field.
TRAINING_OPTIONS = (
    ("model", ModelOpt, None),
    ("data", DataOpt, None),
    ("output_dir", OutputOpt, None),
    ("max_steps", MaxStepsOpt, None),
    ("epochs", EpochsOpt, None),
    ("learning_rate", LrOpt, None),
    ("seed", SeedOpt, None),
    ("set_", SetOpt, None),
    ("force", ForceOpt, False),
    ("resume", ResumeOpt, False),
    ("print_config", PrintConfigOpt, False),
    ("no_preflight", NoPreflightOpt, False),
    ("num_processes", NumProcessesOpt, None),
    ("strategy", StrategyOpt, None),
    ("accelerate_config", AccelerateConfigOpt, None),
    ("json_out", JsonOpt, False),
)


def _resume_hint() -> str:
    import shlex
    import sys

    from lorakit.train.launched import resume_hint

    args = [a for a in sys.argv[1:] if a not in ("--resume", "--force")]
    return resume_hint("lorakit " + shlex.join(args) + " --resume")


def train_stage(spec: TrainingCommand, options: dict) -> None:
    """Resolve the stage's recipe (file <- --set <- flags), then train it here or on --num-processes processes."""
    from lorakit.config import FLAG_FIELDS, load_recipe

    overrides = list(options["set_"] or [])
    if options["no_preflight"]:
        overrides.append("preflight=false")
    flags = {name: options.get(name) for name in FLAG_FIELDS}
    if flags["accelerate_config"] is not None:
        flags["accelerate_config"] = str(flags["accelerate_config"])
    resolved = load_recipe(spec.stage, options["recipe"], overrides, flags)
    if options["print_config"]:
        return print_config(resolved)
    from lorakit.train.launch import run_training

    result = run_training(spec.stage, resolved, force=options["force"], resume=options["resume"],
                          resume_hint=_resume_hint(), debug=state["debug"])
    print_run_summary(spec.title, result.summary, options["json_out"])


def training_command(spec: TrainingCommand) -> Callable[..., None]:
    """The command function of a training stage. Its parameters are declared once, as TRAINING_OPTIONS, and given to
    Typer as the function's signature."""

    def train(**options) -> None:
        train_stage(spec, options)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("recipe", keyword, default=None, annotation=RecipeOpt)]
    if spec.from_help is not None:
        from_opt = Annotated[Optional[str], typer.Option("--from", help=spec.from_help)]
        parameters.append(inspect.Parameter("from_run", keyword, default=None, annotation=from_opt))
    parameters += [inspect.Parameter(name, keyword, default=default, annotation=option)
                   for name, option, default in TRAINING_OPTIONS]
    train.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    train.__name__ = train.__qualname__ = spec.stage
    return train


for _spec in TRAINING_COMMANDS:
    command(_spec.stage, help=_spec.help)(training_command(_spec))


@command(
    "run",
    help="Run a whole pipeline (sft -> dpo -> merge -> quantize) from one recipe; re-runs skip finished stages "
    "whose inputs did not change and resume interrupted ones.\n\n"
    "Examples:\n\n  lorakit run recipes/tiny-cpu-pipeline.yaml\n\n"
    "  lorakit run recipes/qwen2.5-7b-qlora-pipeline.yaml --only sft,dpo\n\n"
    "  lorakit run recipes/tiny-cpu-pipeline.yaml --from-stage merge\n\n"
    "  lorakit run recipes/tiny-cpu-pipeline.yaml --num-processes 2     # sft and dpo on 2 processes",
)
def run(
    recipe: Annotated[Path, typer.Argument(help="Pipeline recipe (stage: pipeline).")],
    only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated stages to run, e.g. sft,dpo.")] = None,
    from_stage: Annotated[Optional[str], typer.Option("--from-stage", help="Run this stage and the ones after.")] = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run every selected stage, even if up to date.")] = False,
    num_processes: NumProcessesOpt = None,
    strategy: StrategyOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    print_config_: PrintConfigOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.config import load_recipe, read_yaml
    from lorakit.console import out, print_json

    overrides = list(set_ or [])
    # the training stages' distributed sections, for those the pipeline has
    for section in [name for name in ("sft", "dpo") if isinstance(read_yaml(recipe).get(name), dict)]:
        for key, value in (("num_processes", num_processes), ("strategy", strategy),
                           ("accelerate_config", accelerate_config)):
            if value is not None:
                overrides.append(f"{section}.distributed.{key}={value}")
    resolved = load_recipe("pipeline", recipe, overrides)
    if print_config_:
        return print_config(resolved)
    from lorakit.pipeline import Pipeline, pipeline_table

    stages = [s.strip() for s in only.split(",") if s.strip()] if only else None
    result = Pipeline(resolved).run(only=stages, from_stage=from_stage, force=force)
    report = result.report.resolve().as_uri() if result.report else None
    if json_out:
        print_json({"stages": result.to_json(), "ok": result.failure is None, "report": report})
    else:
        out.print(pipeline_table(result))
        if report:
            out.print(f"report: {report}", markup=False, highlight=False)
    if result.failure is not None:
        raise result.failure


@command(
    "vram-estimate",
    help="How much GPU memory a run needs, term by term, and what fits on which GPU. Pure arithmetic: no weights, "
    "no GPU, works offline for catalog models and local folders.\n\n"
    "The estimate is for the run you will start: the recipe (--recipe, or the defaults `lorakit sft` trains with), "
    "--set section.key=value like every command, then the flags below. Each flag is a recipe field, named in its "
    "help; the older names (--seq-len, --batch-size, --optimizer paged-adamw-8bit, ...) are accepted as aliases.\n\n"
    "Examples:\n\n  lorakit vram-estimate meta-llama/Llama-3.1-8B\n\n"
    "  lorakit vram-estimate Qwen/Qwen2.5-7B --method qlora --max-length 4096 --micro-batch-size 2 --gpu rtx4090\n\n"
    "  lorakit vram-estimate ./my-model --gpu all\n\n"
    "  lorakit vram-estimate --recipe recipes/llama3.1-8b-qlora-sft.yaml --set lora.r=64\n\n"
    "  lorakit vram-estimate mistralai/Mistral-7B-v0.1 --stage dpo --json\n\n"
    "  lorakit vram-estimate Qwen/Qwen2.5-72B --num-processes 4 --strategy fsdp --gpu a100-80gb\n\n"
    "  curl -sL https://huggingface.co/ORG/NAME/resolve/main/config.json | lorakit vram-estimate -",
)
def vram_estimate(
    model: Annotated[Optional[str], typer.Argument(
        help="Catalog name, hub id (mirrors and checkpoints of catalog models resolve offline), local folder, "
             "config.json, or - to read a config.json from stdin. Default: the recipe's model.name_or_path.")] = None,
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    method: Annotated[Optional[str], typer.Option(
        "--method", help="method: lora or qlora, or full (estimate only). Default: the recipe's (lora, as `lorakit "
                         "sft`).")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "--dtype", help="train.precision: bf16, fp16 or fp32 (auto: bf16). Aliases: --dtype; "
                                       "bfloat16, float16, float32.")] = None,
    mixed_precision: Annotated[Optional[bool], typer.Option(
        "--mixed-precision/--pure", help="Estimate only: fp32 master weights (and adapters) under autocast, or pure "
                                         "16-bit.")] = None,
    max_length: Annotated[Optional[int], typer.Option(
        "--max-length", "--seq-len", help="data.max_length: tokens per sequence (default 2048). Alias: "
                                          "--seq-len.")] = None,
    micro_batch_size: Annotated[Optional[int], typer.Option(
        "--micro-batch-size", "--batch-size", help="train.micro_batch_size: sequences per GPU per step (default 1). "
                                                   "Alias: --batch-size.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing", "--grad-checkpointing/--no-grad-checkpointing",
        help="train.gradient_checkpointing (default on). Alias: --grad-checkpointing.")] = None,
    optim: Annotated[Optional[str], typer.Option(
        "--optim", "--optimizer", help="train.optim: auto (paged_adamw_8bit for qlora, adamw_torch otherwise), "
                                       "adamw_torch, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit, sgd; or adafactor "
                                       "(estimate only). Aliases: --optimizer; adamw, adamw-8bit, paged-adamw, "
                                       "paged-adamw-8bit.")] = None,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="lora.r: the LoRA rank (default 16).")] = None,
    target_modules: Annotated[Optional[str], typer.Option(
        "--target-modules", "--lora-targets", help="lora.target_modules: all-linear or a list like q_proj,v_proj (or "
                                                   "q,v). Alias: --lora-targets.")] = None,
    attn_implementation: Annotated[Optional[str], typer.Option(
        "--attn-implementation", "--attn", help="model.attn_implementation: sdpa, eager or flash_attention_2 (default "
                                                "sdpa, flash_attention_2 where flash-attn is installed). Aliases: "
                                                "--attn; flash.")] = None,
    loss: Annotated[Optional[str], typer.Option(
        "--loss", help="train.loss: plain or fused (auto: fused, lorakit's CUDA choice); or chunked (estimate "
                       "only).")] = None,
    stage: Annotated[Optional[str], typer.Option(
        "--stage", help="sft, dpo, dpo-precomputed (dpo.precompute_ref_log_probs) or inference. Default: the "
                        "recipe's stage.")] = None,
    double_quant: Annotated[Optional[bool], typer.Option(
        "--double-quant/--no-double-quant", help="qlora.double_quant (default on).")] = None,
    quant: Annotated[Optional[str], typer.Option(
        "--quant", help="qlora.quant_type: nf4 or fp4 (4-bit base of qlora); or int8 (estimate only, with --stage "
                        "inference).")] = None,
    activation_offloading: Annotated[Optional[bool], typer.Option(
        "--activation-offloading/--no-activation-offloading",
        help="train.activation_offloading: saved activations in pinned host RAM.")] = None,
    optimizer_in_backward: Annotated[Optional[bool], typer.Option(
        "--optimizer-in-backward", help="Estimate only: step each parameter during backward (torchtune's "
                                        "optimizer_in_bwd).")] = None,
    num_processes: Annotated[Optional[int], typer.Option(
        "--num-processes", "-n", "--num-gpus", help="distributed.num_processes: GPUs in data parallel; estimates are "
                                                    "per GPU. Alias: --num-gpus.")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", help="distributed.strategy, with several GPUs: ddp, fsdp, zero2 or zero3 (default ddp).")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="A GPU name (rtx4090, a100-80gb, ...) or all.")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.vram.command import EstimateOptions, run_estimate
    from lorakit.vram.render import render

    options = EstimateOptions(
        model=model, recipe=recipe, overrides=list(set_ or []), method=method, precision=precision,
        mixed_precision=mixed_precision, max_length=max_length, micro_batch_size=micro_batch_size,
        gradient_checkpointing=gradient_checkpointing, optim=optim, lora_r=lora_r, target_modules=target_modules,
        attn_implementation=attn_implementation, loss=loss, stage=stage, double_quant=double_quant, quant=quant,
        activation_offloading=activation_offloading, optimizer_in_backward=optimizer_in_backward,
        num_processes=num_processes, strategy=strategy, gpu=gpu)
    render(run_estimate(options), json_out)
