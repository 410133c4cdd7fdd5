"""Looking at data and results: `data check`, `eval`, `report`, and `env` (what this machine has)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import command, command_group
from lorakit.cli.options import JsonOpt, RewardOpt, SetOpt


@command(
    "eval",
    help="Score the base model and each run on the same held-out data, and flag stages that made it worse.\n\n"
    "Examples:\n\n  lorakit eval out/sft out/dpo --data held-out.jsonl\n\n"
    "  lorakit eval out/dpo --prefs held-out-prefs.jsonl --fail-on-regression\n\n"
    "  lorakit eval out/dpo-merged out/dpo-merged-gguf --data held-out.jsonl --prompts prompts.txt\n\n"
    "  lorakit eval out/sft out/dpo --tasks examples/data/mc-facts.jsonl      # your own questions, offline\n\n"
    "  lorakit eval out/dpo --tasks hellaswag,arc_easy,mmlu --limit 200 --fail-on-regression   # lorakit\\[eval]\n\n"
    "  lorakit eval out/sft out/grpo --prompts held-out.jsonl --reward exact_answer --samples 8  # GRPO's rewards",
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
    reward: RewardOpt = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="With --reward: also sample K replies per prompt "
                                         "(pass@K, mean sampled reward).")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="With --samples: sampling "
                                               "temperature.")] = 1.0,
    pass_threshold: Annotated[Optional[float], typer.Option(
        "--pass-threshold", help="With --reward: a reply passes when its total reward is at least this (default: "
                                 "full marks from every verifiable built-in).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(
        "--max-new-tokens", min=1, help="With --reward: reply length (default: the GRPO run's "
                                        "max_completion_length, else 128).")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import print_json
    from lorakit.eval.regression import raise_on_regression
    from lorakit.eval.render import print_eval
    from lorakit.eval.rewards import RewardOptions
    from lorakit.eval.run import run_eval

    rewards = [n.strip() for value in reward or [] for n in value.split(",") if n.strip()] or None
    report = run_eval(paths, data, prefs, prompts, not no_base, base_model, tolerance=tolerance, tasks=tasks,
                      task_files=task_file, limit=limit, num_fewshot=num_fewshot, chat_template=chat_template,
                      batch_size=batch_size, reward_options=RewardOptions(rewards, samples, temperature,
                                                                          pass_threshold, max_new_tokens))
    if json_out:
        print_json(report)
    else:
        print_eval(report)
    if fail_on_regression:
        raise_on_regression(report)


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
    from lorakit.report import write_comparison_report

    target, skipped = write_comparison_report(paths, output)
    for item in skipped:
        info(f"skipped {item}")
    out.print(f"report: {target.resolve().as_uri()}", markup=False, highlight=False)


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
    "  lorakit data check prefs.jsonl --stage dpo\n\n"
    "  lorakit data check prompts.jsonl --stage grpo --model builtin:tiny-llama",
)
def data_check(
    path: Annotated[str, typer.Argument(help="Data file, folder or hub dataset id.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Tokenizer to count tokens and lint masks with.")] = None,
    stage: Annotated[str, typer.Option("--stage", help="sft, dpo or grpo (which formats to accept).")] = "sft",
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
    from lorakit.data.inspect import check_data

    report = check_data(path, model=model, stage=stage, fmt=fmt, max_length=max_length, overrides=set_ or [],
                        against=against or [], show=show)
    render_check(report, f"data check: {path}", json_out)


@command(
    "env",
    help="Show what this machine has (device, GPU, kernels, versions) and the defaults lorakit picks on it.\n\n"
    "Examples:\n\n  lorakit env --json\n\n"
    "  lorakit env --prefetch gguf-converter     # fetch llama.cpp's GGUF converter now, for offline use later",
)
def env(json_out: JsonOpt = False,
        prefetch: Annotated[Optional[list[str]], typer.Option(
            "--prefetch", help="Fetch a tool lorakit manages now (gguf-converter, llm-compressor), instead of on "
            "first use.")] = None) -> None:
    from lorakit.console import info, key_value_table, out, print_json
    from lorakit.env import describe_environment
    from lorakit.env import prefetch as fetch_tool

    for name in prefetch or []:
        info(f"{name}: {fetch_tool(name)}")
    report = describe_environment()
    if json_out:
        print_json(report)
        return
    out.print(key_value_table("detected", report["detected"]))
    out.print(key_value_table("chosen by default", report["chosen"]))
    out.print(key_value_table("tools lorakit manages", report["tools"]))
    out.print(key_value_table("versions", report["versions"]))
