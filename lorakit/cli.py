"""The `lorakit` command line: a thin shell over the stage functions.

Each command parses flags, builds a recipe and calls one stage function. This module is the only error boundary:
a LorakitError becomes `error:` / `hint:` on stderr and a non-zero exit code; a traceback appears only with --debug.
Heavy libraries (torch, transformers, trl) are imported inside the commands so `lorakit --help` stays instant.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from lorakit import __version__
from lorakit.errors import LorakitError

app = typer.Typer(
    name="lorakit",
    help="LoRA/QLoRA fine-tuning for one consumer GPU: sft -> dpo -> merge -> quantize.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": os.environ.get("LORAKIT_DEBUG", "") not in ("", "0")}


def _print_error(message: str, hint: str | None) -> None:
    from lorakit.console import err

    from rich.markup import escape

    # escape: messages quote paths, extras ("lorakit[llama-cpp]") and regexes that Rich would read as markup
    err.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True, highlight=False)
    if hint:
        err.print(f"[bold]hint:[/bold] {escape(hint)}", markup=True, highlight=False)


def _fail(message: str, hint: str | None, code: int, kind: str) -> None:
    """Print a failure, or, in a training process of `--num-processes`, leave it for the launching command to
    report once (lorakit.train.launch)."""
    from lorakit.train.launch import report_failure

    if not report_failure(message, hint, code, kind):
        _print_error(message, hint)


def guarded(fn: Callable) -> Callable:
    """Turn LorakitError (and any unexpected crash) into a clean message and exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lorakit.errors import RunInterrupted

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except LorakitError as exc:
            kind = "interrupted" if isinstance(exc, RunInterrupted) else "error"
            if _state["debug"]:
                _fail(exc.message, exc.hint, exc.exit_code, kind)
                raise
            _fail(exc.message, exc.hint, exc.exit_code, kind)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _fail("interrupted", None, 130, "interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not bad input: say so, and how to get the traceback
            message = f"unexpected {type(exc).__name__}: {exc}"
            if _state["debug"]:
                _fail(message, "see the traceback above", 1, "unexpected")
                raise
            _fail(message, "re-run with --debug for the full traceback", 1, "unexpected")
            raise typer.Exit(1) from None

    return wrapper


# Every command's path (("sft",), ("data", "check"), ...), as registered: the help tests walk it.
COMMANDS: list[tuple[str, ...]] = []
GROUPS: dict[str, typer.Typer] = {}


def command(name: str, group: str | None = None, **kwargs) -> Callable:
    """Register a guarded command on `app` (or on one of its groups, e.g. `data`)."""

    def decorator(fn: Callable) -> Callable:
        (GROUPS[group] if group else app).command(name, **kwargs)(guarded(fn))
        COMMANDS.append((group, name) if group else (name,))
        return fn

    return decorator


def command_group(name: str, help: str) -> None:
    GROUPS[name] = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(GROUPS[name], name=name)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lorakit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("LORAKIT_DEBUG", "") not in ("", "0")
    # Library chatter (per-step tqdm bars, advisory warnings) would bury lorakit's own progress and errors.
    for name, value in (("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    import warnings

    # append: filters set earlier (the test suite's, which make lorakit's own deprecated calls errors) still win
    warnings.filterwarnings("ignore", category=FutureWarning, append=True)
    warnings.filterwarnings("ignore", category=DeprecationWarning, append=True)
    from lorakit.compat import quiet_bitsandbytes_cpu_kernel_advice
    from lorakit.train.launch import join_launch

    quiet_bitsandbytes_cpu_kernel_advice()
    join_launch()  # a training process of several: only rank 0 talks to the terminal


def main() -> None:
    app()


# ---------------------------------------------------------------------------------------------------------------
# Shared options (one definition, reused by every command that takes them)

RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML (see recipes/).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override any recipe field: section.key=value (repeatable)."),
]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Base model: hub id, folder or builtin:tiny-llama.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="Training data: file, folder or hub dataset id.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Run folder to write.")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.")]
EpochsOpt = Annotated[Optional[float], typer.Option("--epochs", help="Passes over the data.")]
LrOpt = Annotated[Optional[float], typer.Option("--learning-rate", "--lr", help="Peak learning rate.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
NoPreflightOpt = Annotated[bool, typer.Option("--no-preflight", help="Skip the GPU-memory check before loading.")]
NumProcessesOpt = Annotated[Optional[int], typer.Option(
    "--num-processes", "-n", min=1, help="Train on N processes (one per GPU) through accelerate; global batch = "
    "micro-batch x accumulation x N.")]
StrategyOpt = Annotated[Optional[str], typer.Option(
    "--strategy", help="With --num-processes: ddp (default), fsdp, zero2 or zero3.")]
AccelerateConfigOpt = Annotated[Optional[Path], typer.Option(
    "--accelerate-config", help="An accelerate config file to launch with (several machines, your own FSDP/DeepSpeed "
    "settings) instead of the one lorakit writes.")]


def _resolve_training_recipe(stage, recipe, set_, no_preflight, **flags):
    from lorakit.config import load_recipe

    overrides = list(set_ or [])
    if no_preflight:
        overrides.append("preflight=false")
    return load_recipe(stage, recipe, overrides, flags)


def _resume_hint() -> str:
    import shlex
    import sys

    from lorakit.train.launch import resume_hint

    args = [a for a in sys.argv[1:] if a not in ("--resume", "--force")]
    return resume_hint("lorakit " + shlex.join(args) + " --resume")


def _print_config(resolved) -> None:
    from lorakit.config import recipe_to_yaml
    from lorakit.console import out

    out.print(recipe_to_yaml(resolved), markup=False)


def _print_run_summary(title: str, summary: dict, as_json: bool) -> None:
    from lorakit.console import key_value_table, out, print_json
    from lorakit.train.launch import quiet_child

    if quiet_child():  # one of several training processes: the command that launched them prints the result
        return
    if as_json:
        print_json(summary)
    else:
        out.print(key_value_table(title, summary))


@command(
    "sft",
    help="Supervised fine-tuning of a LoRA/QLoRA adapter.\n\n"
    "Examples:\n\n"
    "  lorakit sft --recipe recipes/tiny-cpu-sft.yaml\n\n"
    "  lorakit sft --model ./my-model --data chats.jsonl --output-dir out/sft\n\n"
    "  lorakit sft -r recipes/qwen2.5-7b-qlora-sft.yaml --set lora.r=32 --max-steps 200\n\n"
    "  lorakit sft -r recipes/tiny-cpu-sft.yaml --num-processes 2          # 2 processes (DDP)\n\n"
    "  lorakit sft -r recipes/llama3.1-8b-qlora-sft.yaml -n 4 --strategy fsdp",
)
def sft(
    recipe: RecipeOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    output_dir: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    learning_rate: LrOpt = None,
    seed: SeedOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
    print_config: PrintConfigOpt = False,
    no_preflight: NoPreflightOpt = False,
    num_processes: NumProcessesOpt = None,
    strategy: StrategyOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    resolved = _resolve_training_recipe(
        "sft", recipe, set_, no_preflight, model=model, data=data, output_dir=output_dir, max_steps=max_steps,
        epochs=epochs, learning_rate=learning_rate, seed=seed, num_processes=num_processes, strategy=strategy,
        accelerate_config=str(accelerate_config) if accelerate_config else None,
    )
    if print_config:
        return _print_config(resolved)
    from lorakit.train.launch import run_training

    result = run_training("sft", resolved, force=force, resume=resume, resume_hint=_resume_hint(),
                          debug=_state["debug"])
    _print_run_summary("SFT run", result.summary, json_out)


@command(
    "generate",
    help="Generate a reply from a run (base + adapter) or a merged model folder.\n\n"
    "Example:\n\n  lorakit generate out/sft --prompt \"What is the capital of France?\"",
)
def generate(
    path: Annotated[Path, typer.Argument(help="Run folder or merged model folder.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="User message (repeatable).")],
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
    model: Annotated[Optional[str], typer.Option("--model", help="Base model, if it moved since training.")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import err, out, print_json
    from lorakit.infer import generate_reply, load_for_inference

    with err.status(f"Loading {path}..."):
        loaded, tokenizer = load_for_inference(path, model)
    results = []
    for text in prompt:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        reply = generate_reply(loaded, tokenizer, messages, max_new_tokens, temperature)
        results.append({"prompt": text, "reply": reply})
        if not json_out:
            out.print(f"[bold]>>> {text}[/bold]", highlight=False)
            out.print(reply, markup=False, highlight=False)
    if json_out:
        print_json(results)


@command(
    "chat",
    help="Chat with a run or a merged model in the terminal (/reset clears history, /exit quits).\n\n"
    "Example:\n\n  lorakit chat out/sft",
)
def chat(
    path: Annotated[Path, typer.Argument(help="Run folder or merged model folder.")],
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.7,
    model: Annotated[Optional[str], typer.Option("--model", help="Base model, if it moved since training.")] = None,
) -> None:
    from lorakit.console import err, out
    from lorakit.infer import generate_reply, load_for_inference

    with err.status(f"Loading {path}..."):
        loaded, tokenizer = load_for_inference(path, model)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    err.print("Type a message; /reset clears the conversation, /exit or Ctrl-D quits.")
    while True:
        try:
            text = input("you> ")
        except EOFError:
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        reply = generate_reply(loaded, tokenizer, history, max_new_tokens, temperature)
        history.append({"role": "assistant", "content": reply})
        out.print(f"[bold cyan]model>[/bold cyan] {reply}", highlight=False)


command_group("data", help="Inspect datasets before training.")


@command(
    "check",
    group="data",
    help="Check a dataset without training: format, bad rows, duplicates and near-duplicates, contamination against "
    "eval and benchmark files, lengths, the mask/EOS lint, and what trains.\n\n"
    "Examples:\n\n  lorakit data check examples/data/chat-messages.jsonl --model builtin:tiny-llama\n\n"
    "  lorakit data check chats.jsonl --model builtin:tiny-llama --show 2          # rendered, trained tokens marked\n\n"
    "  lorakit data check chats.jsonl --against examples/data/mc-facts.jsonl      # benchmark contamination\n\n"
    "  lorakit data check chats.jsonl --set data.eval=test.jsonl --set data.dedup_threshold=0.8\n\n"
    "  lorakit data check prefs.jsonl --stage dpo",
)
def data_check(
    path: Annotated[str, typer.Argument(help="Data file, folder or hub dataset id.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Tokenizer to count tokens and lint masks with.")] = None,
    stage: Annotated[str, typer.Option("--stage", help="sft or dpo (which formats to accept).")] = "sft",
    fmt: Annotated[str, typer.Option("--format", help="Force a format instead of detecting it.")] = "auto",
    max_length: Annotated[int, typer.Option("--max-length", help="Truncation length to check against.")] = 2048,
    against: Annotated[Optional[list[str]], typer.Option(
        "--against", help="A benchmark file to check the rows against for contamination (.jsonl/.json/.csv/.parquet/"
        ".txt, or an lm-eval task .yaml with local data); repeatable.")] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Print N examples rendered with the chat template, "
                                      "trained tokens highlighted (needs --model).")] = 0,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.data.check_view import render_check
    from lorakit.data.report import check_data

    report = check_data(path, model=model, stage=stage, fmt=fmt, max_length=max_length, overrides=set_ or [],
                        against=against or [], show=show)
    render_check(report, f"data check: {path}", json_out)


@command(
    "env",
    help="Show what this machine has (device, GPU, kernels, versions) and the defaults lorakit picks on it.\n\n"
    "Example:\n\n  lorakit env --json",
)
def env(json_out: JsonOpt = False) -> None:
    from lorakit.console import key_value_table, out, print_json
    from lorakit.env import describe_environment

    report = describe_environment()
    if json_out:
        print_json(report)
        return
    out.print(key_value_table("detected", report["detected"]))
    out.print(key_value_table("chosen by default", report["chosen"]))
    out.print(key_value_table("versions", report["versions"]))


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
    print_config: PrintConfigOpt = False,
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
    if print_config:
        return _print_config(resolved)
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
    "eval",
    help="Score the base model and each run on the same held-out data, and flag stages that made it worse.\n\n"
    "Examples:\n\n  lorakit eval out/sft out/dpo --data held-out.jsonl\n\n"
    "  lorakit eval out/dpo --prefs held-out-prefs.jsonl --fail-on-regression\n\n"
    "  lorakit eval out/dpo-merged out/dpo-merged-gguf --data held-out.jsonl --prompts prompts.txt\n\n"
    "  lorakit eval out/sft out/dpo --tasks examples/data/mc-facts.jsonl      # your own questions, offline\n\n"
    "  lorakit eval out/dpo --tasks hellaswag,arc_easy,mmlu --limit 200 --fail-on-regression   # lorakit\\[eval]",
)
def eval_(
    paths: Annotated[list[Path], typer.Argument(help="Run folders, merged model folders or GGUF exports.")],
    data: Annotated[Optional[str], typer.Option("--data", help="SFT-style data: loss and perplexity.")] = None,
    prefs: Annotated[Optional[str], typer.Option("--prefs", help="Preference pairs: reward accuracy, margin.")] = None,
    prompts: Annotated[Optional[list[str]], typer.Option("--prompts", help="A prompt, or a file of prompts "
                                                         "(one per line), to generate side by side.")] = None,
    no_base: Annotated[bool, typer.Option("--no-base", help="Do not score the base model.")] = False,
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="Base model, if it moved.")] = None,
    fail_on_regression: Annotated[bool, typer.Option("--fail-on-regression",
                                                     help="Exit non-zero when a stage is worse than its parent.")] = False,
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, help="How much worse than its parent a stage "
                                             "may be before it counts, relative to the parent's value.")] = 0.01,
    tasks: Annotated[Optional[list[str]], typer.Option(
        "--tasks", help="Benchmarks through lm-evaluation-harness: task names (hellaswag,arc_easy,mmlu) and/or your "
                        "own .jsonl question sets (multiple choice or generation).")] = None,
    task_file: Annotated[Optional[list[str]], typer.Option(
        "--task-file", help="An lm-eval task YAML of your own (repeatable).")] = None,
    limit: Annotated[Optional[float], typer.Option(
        "--limit", min=0.0, help="Questions per task (a fraction below 1); for quick looks, not for reporting.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", min=0, help="Few-shot examples per question "
                                                       "(default: each task's own).")] = None,
    chat_template: Annotated[str, typer.Option(
        "--chat-template", help="auto: on for your own sets and generation tasks, off for loglikelihood benchmarks; "
                                "or on / off for every task.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="lm-eval batch size.")] = 8,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import print_json
    from lorakit.eval.regression import raise_on_regression
    from lorakit.eval.render import print_eval
    from lorakit.eval.run import run_eval

    report = run_eval(paths, data, prefs, prompts, not no_base, base_model, tolerance=tolerance, tasks=tasks,
                      task_files=task_file, limit=limit, num_fewshot=num_fewshot, chat_template=chat_template,
                      batch_size=batch_size)
    if json_out:
        print_json(report)
    else:
        print_eval(report)
    if fail_on_regression:
        raise_on_regression(report)


@command(
    "dpo",
    help="Direct Preference Optimization of a LoRA/QLoRA adapter, continuing from an SFT run.\n\n"
    "Examples:\n\n"
    "  lorakit dpo --from out/sft --data prefs.jsonl --output-dir out/dpo\n\n"
    "  lorakit dpo --recipe recipes/tiny-cpu-dpo.yaml\n\n"
    "  lorakit dpo --model ./base --data prefs.jsonl --output-dir out/dpo-from-base\n\n"
    "  lorakit dpo --from out/sft --data prefs.jsonl -o out/dpo --num-processes 2",
)
def dpo(
    recipe: RecipeOpt = None,
    from_run: Annotated[Optional[str], typer.Option("--from", help="SFT run folder to continue from.")] = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    output_dir: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    learning_rate: LrOpt = None,
    seed: SeedOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
    print_config: PrintConfigOpt = False,
    no_preflight: NoPreflightOpt = False,
    num_processes: NumProcessesOpt = None,
    strategy: StrategyOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    resolved = _resolve_training_recipe(
        "dpo", recipe, set_, no_preflight, from_run=from_run, model=model, data=data, output_dir=output_dir,
        max_steps=max_steps, epochs=epochs, learning_rate=learning_rate, seed=seed, num_processes=num_processes,
        strategy=strategy, accelerate_config=str(accelerate_config) if accelerate_config else None,
    )
    if print_config:
        return _print_config(resolved)
    from lorakit.train.launch import run_training

    result = run_training("dpo", resolved, force=force, resume=resume, resume_hint=_resume_hint(),
                          debug=_state["debug"])
    _print_run_summary("DPO run", result.summary, json_out)


@command(
    "merge",
    help="Fold a run's adapter into its base and write a standalone model (measuring the merge gap).\n\n"
    "Examples:\n\n  lorakit merge out/dpo                      # -> out/dpo-merged\n\n"
    "  lorakit merge out/sft --dtype float16 --output-dir merged/\n\n"
    "  lorakit merge out/qlora-run --base original",
)
def merge(
    source: Annotated[Path, typer.Argument(help="Run folder (sft or dpo), or a PEFT adapter folder with --model.")],
    output_dir: OutputOpt = None,
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="bfloat16, float16 or float32 (default bfloat16; float32 for a base unpacked from a GGUF).")]
    = None,
    base: Annotated[str, typer.Option("--base", help="QLoRA runs: dequantized (exact, default) or original.")]
    = "dequantized",
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="e.g. 2GB, 500MB.")] = "2GB",
    model: Annotated[Optional[str], typer.Option("--model", help="Base model, for a bare adapter or a moved base.")]
    = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip measuring the merge gap.")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.merge import merge_run

    result = merge_run(source, output_dir, dtype, base, max_shard_size, force, model, not no_verify)
    summary = {"output": str(result.path), "mode": result.mode, "dtype": result.dtype, **(result.gap or {})}
    _print_run_summary("merge", summary, json_out)


@command(
    "vram-estimate",
    help="How much GPU memory a run needs, term by term, and what fits on which GPU. Pure arithmetic: no weights, "
    "no GPU, works offline for catalog models and local folders.\n\n"
    "Examples:\n\n  lorakit vram-estimate meta-llama/Llama-3.1-8B\n\n"
    "  lorakit vram-estimate Qwen/Qwen2.5-7B --method lora --seq-len 4096 --batch-size 2 --gpu rtx4090\n\n"
    "  lorakit vram-estimate ./my-model --gpu all\n\n"
    "  lorakit vram-estimate --recipe recipes/llama3.1-8b-qlora-sft.yaml\n\n"
    "  lorakit vram-estimate mistralai/Mistral-7B-v0.1 --stage dpo --json\n\n"
    "  lorakit vram-estimate Qwen/Qwen2.5-72B --method lora --num-gpus 4 --strategy fsdp --gpu a100-80gb\n\n"
    "  curl -sL https://huggingface.co/ORG/NAME/resolve/main/config.json | lorakit vram-estimate -",
)
def vram_estimate(
    model: Annotated[Optional[str], typer.Argument(
        help="Catalog name, hub id (mirrors and checkpoints of catalog models resolve offline), local folder, "
             "config.json, or - to read a config.json from stdin.")] = None,
    recipe: RecipeOpt = None,
    method: Annotated[Optional[str], typer.Option(help="full, lora or qlora (default qlora).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="bf16, fp16 or fp32 (default bf16).")] = None,
    mixed_precision: Annotated[Optional[bool], typer.Option(
        "--mixed-precision/--pure", help="fp32 master weights (and adapters) under autocast, or pure 16-bit.")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Tokens per sequence (default 2048).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Micro-batch size per GPU (default 1).")] = None,
    grad_checkpointing: Annotated[Optional[bool], typer.Option(
        "--grad-checkpointing/--no-grad-checkpointing", help="Default on.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        help="adamw, adamw-8bit, paged-adamw, paged-adamw-8bit, sgd, adafactor (default: paged-adamw-8bit for "
             "qlora, adamw otherwise).")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank (default 16).")] = None,
    lora_targets: Annotated[Optional[str], typer.Option(help="all-linear or a list like q,v or q,k,v,o.")] = None,
    attn: Annotated[Optional[str], typer.Option(help="eager, sdpa or flash (default sdpa).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="plain, chunked or fused (default fused, lorakit's CUDA choice).")]
    = None,
    stage: Annotated[Optional[str], typer.Option(help="sft, dpo, dpo-precomputed or inference (default sft).")] = None,
    double_quant: Annotated[Optional[bool], typer.Option("--double-quant/--no-double-quant", help="Default on.")]
    = None,
    quant: Annotated[Optional[str], typer.Option(
        help="Base-weight quantization: nf4, fp4 (4-bit) or int8 (8-bit); with --stage inference, or qlora.")] = None,
    activation_offloading: Annotated[Optional[bool], typer.Option(
        "--activation-offloading/--no-activation-offloading",
        help="Saved activations in pinned host RAM (TRL's activation_offloading).")] = None,
    optimizer_in_backward: Annotated[Optional[bool], typer.Option(
        "--optimizer-in-backward", help="Step each parameter during backward (torchtune's optimizer_in_bwd).")] = None,
    num_gpus: Annotated[Optional[int], typer.Option(help="GPUs in data parallel; estimates are per GPU.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="With --num-gpus: ddp, fsdp, zero2 or zero3 (default ddp).")]
    = None,
    gpu: Annotated[Optional[str], typer.Option(help="A GPU name (rtx4090, a100-80gb, ...) or all.")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.vram.command import EstimateOptions, run_estimate
    from lorakit.vram.report import render

    options = EstimateOptions(
        model=model, recipe=recipe, method=method, dtype=dtype, mixed_precision=mixed_precision, seq_len=seq_len,
        batch_size=batch_size, grad_checkpointing=grad_checkpointing, optimizer=optimizer, lora_r=lora_r,
        lora_targets=lora_targets, attn=attn, loss=loss, stage=stage, double_quant=double_quant, quant=quant,
        activation_offloading=activation_offloading, optimizer_in_backward=optimizer_in_backward, num_gpus=num_gpus,
        strategy=strategy, gpu=gpu)
    render(run_estimate(options), json_out)


@command(
    "quantize",
    help="Quantize for deployment: GGUF (+ Ollama Modelfile) for llama.cpp/Ollama/LM Studio, or serialized "
    "bitsandbytes for transformers/vLLM; always verified against the source model.\n\n"
    "Examples:\n\n  lorakit quantize out/dpo-merged --format gguf --type q8_0\n\n"
    "  lorakit quantize out/dpo --format gguf --type q4_0        # a run folder: merged first\n\n"
    "  lorakit quantize out/dpo-merged --format bnb-4bit",
)
def quantize(
    source: Annotated[Path, typer.Argument(help="A merged model folder, or an sft/dpo run folder (merged first).")],
    format: Annotated[str, typer.Option("--format", help="gguf, bnb-4bit or bnb-8bit (awq/gptq: see README).")]
    = "gguf",
    type_: Annotated[str, typer.Option("--type", help="GGUF type: f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1; "
                                                      "q4_k_m, q5_k_m, q6_k with lorakit\\[llama-cpp].")] = "q8_0",
    output_dir: OutputOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the checks against the source.")] = False,
    no_modelfile: Annotated[bool, typer.Option("--no-modelfile", help="Do not write an Ollama Modelfile.")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.export.quantize import run_quantize

    result = run_quantize(source, format, type_, output_dir, force, not no_verify, not no_modelfile)
    _print_run_summary("quantize", result.summary, json_out)


# ---------------------------------------------------------------------------------------------------------------
# report (lorakit.eval.report)


@command(
    "report",
    help="Write report.html: one run's curves and scores, or one page comparing several outputs (curves overlaid, "
    "headline metrics, lineage base -> sft -> dpo -> merged -> export). Self-contained: open it anywhere.\n\n"
    "Examples:\n\n  lorakit report out/tiny-pipeline/*          # -> out/tiny-pipeline/report.html\n\n"
    "  lorakit report out/sft                       # redraw out/sft/report.html\n\n"
    "  lorakit report out/sft-a out/sft-b -o compare.html",
)
def report(
    paths: Annotated[list[Path], typer.Argument(help="Run, merged or export folders, or a pipeline's root.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the page (default: "
                                                   "report.html in the folders' common parent).")] = None,
) -> None:
    from lorakit.console import info, out
    from lorakit.eval.report import write_comparison_report

    target, skipped = write_comparison_report(paths, output)
    for item in skipped:
        info(f"skipped {item}")
    out.print(f"report: {target.resolve().as_uri()}", markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------------------------
# Serving: the commands that serve what lorakit wrote, and the built-in base a server needs for its adapters


@command(
    "serve-info",
    help="The exact commands that serve a run, a merged model or an export in vLLM, llama.cpp's llama-server, "
    "Ollama and transformers (paths, LoRA rank, chat template and stop tokens of this artifact).\n\n"
    "Examples:\n\n  lorakit serve-info out/tiny-pipeline/sft\n\n"
    "  lorakit serve-info out/tiny-pipeline/sft out/tiny-pipeline/dpo      # both adapters on one vLLM server\n\n"
    "  lorakit serve-info out/tiny-pipeline/merged --json\n\n"
    "  lorakit serve-info out/tiny-pipeline/export\n\n"
    "  lorakit serve-info out/sft --base bases/tiny-llama                  # after lorakit export-base",
)
def serve_info(
    paths: Annotated[list[Path], typer.Argument(help="A run folder (or several on one base), merged model or export.")],
    base: Annotated[Optional[str], typer.Option("--base", help="Adapter runs: the base's folder, if it is not where "
                                                "the run was trained (e.g. written by lorakit export-base).")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import print_json
    from lorakit.export.serve_info import render
    from lorakit.export.serve_info import serve_info as describe_serving

    info = describe_serving(paths, base)
    if json_out:
        print_json(info)
    else:
        render(info)


@command(
    "export-base",
    help="Write a base that exists only in lorakit's cache (a built-in model such as builtin:tiny-llama, or a GGUF "
    "file unpacked for training) into a folder of your choice, so a server elsewhere can load the adapters trained "
    "on it (the same files as the cached copy).\n\n"
    "Examples:\n\n  lorakit export-base builtin:tiny-llama bases/tiny-llama\n\n"
    "  lorakit export-base out/tiny-pipeline/sft bases/tiny-llama      # the base of that run\n\n"
    "  lorakit export-base out/smollm2-pipeline/sft bases/smollm2       # a run on a .gguf: its unpacked base",
)
def export_base(
    source: Annotated[str, typer.Argument(help="builtin:NAME, or a run folder trained on one or on a GGUF file.")],
    output_dir: Annotated[Path, typer.Argument(help="Folder to write.")],
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import info
    from lorakit.export.base import export_base as write_base

    name, target = write_base(source, output_dir, force)
    if not json_out:
        info(f"Serve adapters trained on {name} with it: lorakit serve-info RUN --base {target}")
    _print_run_summary("export-base", {"base": name, "output": str(target)}, json_out)
