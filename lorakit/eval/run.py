"""`lorakit eval`: did each stage help? Score the base model and each run on the same held-out data.

Held-out prompts with `--reward` are scored by the rewards GRPO trains with (lorakit.eval.rewards): mean reward and
pass rates of greedy and sampled replies.

SFT-style data is scored by loss and perplexity on the tokens training would train (the same rendering and masks as
`lorakit sft`). Preference data is scored by DPO's implicit reward: reward accuracy and mean margin of a policy
against its reference, and the policy's own chosen-minus-rejected log-prob gap. Every candidate is compared with
its parent (dpo -> sft -> base; merged -> its run; GGUF export -> its merged model) so a regression stands out.
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path
from typing import Any

from lorakit.chat_template import end_of_turn_token
from lorakit.config import DataSection
from lorakit.console import err
from lorakit.errors import ConfigError, DataError
from lorakit.eval.benchmarks import directions, flat_scores, plan_benchmarks, run_benchmarks
from lorakit.eval.candidates import Candidate, base_location, collect_candidates, load_candidate
from lorakit.eval.contamination import check_runs_against, local_task_files
from lorakit.eval.loss import sft_scores
from lorakit.eval.preferences import preference_scores
from lorakit.eval.regression import regressions
from lorakit.eval.rewards import RewardEval, RewardOptions, metric_directions, plan_reward_eval, reward_scores
from lorakit.infer import check_tokenizer, generate_reply
from lorakit.io import read_text, write_json_atomic
from lorakit.outputs import TRAINING_STAGES, hold_output
from lorakit.outputs.layout import EVAL_FILE, REPORT_FILE
from lorakit.report import write_run_report_safely


def score_candidate(candidate: Candidate, location: str | None, reference_tokenizer, candidates: list[Candidate],
                    data_section: DataSection | None, prefs: str | None, prompts: list[str],
                    max_new_tokens: int, plan=None, reward_eval: RewardEval | None = None) -> None:
    """Load one candidate, score it into `candidate.scores`, and let it go: only one model is resident at a time
    (the model is local to this call, so nothing keeps it alive once it returns)."""
    model, tokenizer = load_candidate(candidate, location)
    tokenizer = tokenizer or reference_tokenizer
    if tokenizer is None:
        raise ConfigError("no tokenizer to evaluate the base model with",
                          hint="pass at least one run folder, or --no-base")
    if data_section is not None:
        candidate.scores.update(sft_scores(model, tokenizer, data_section))
    if prefs:
        candidate.scores.update(preference_scores(candidate, model, tokenizer, prefs, candidates, location))
    if reward_eval is not None:
        scores, candidate.reward_examples = reward_scores(model, tokenizer, reward_eval)
        candidate.scores.update(scores)
    if prompts:
        candidate.generations = [generate_reply(model, tokenizer, [{"role": "user", "content": p}], max_new_tokens)
                                 for p in prompts]
    if plan is not None:
        candidate.benchmarks = run_benchmarks(plan, model, tokenizer)
        candidate.scores.update(flat_scores(candidate.benchmarks))


KEEP_PREVIOUS = 20


def result_folder(candidate: Candidate) -> Path | None:
    """The folder a candidate's eval.json goes into (none for the base model)."""
    if candidate.kind == "gguf" and candidate.path is not None:
        return candidate.path.parent
    if candidate.kind in (*TRAINING_STAGES, "merged") and candidate.path is not None and candidate.path.is_dir():
        return candidate.path
    return None


def save_results(candidates: list[Candidate], report: dict[str, Any]) -> None:
    """eval.json is the latest report; earlier ones (other data, a --prompts-only look) stay under "previous"."""
    for candidate in candidates:
        folder = result_folder(candidate)
        if folder is None:
            continue
        previous: list[dict[str, Any]] = []
        try:
            earlier = json.loads((folder / EVAL_FILE).read_text())
            previous = [{k: v for k, v in earlier.items() if k != "previous"}, *earlier.get("previous", [])]
        except (OSError, ValueError, AttributeError, RecursionError):
            pass  # none yet, or unreadable: start the history here
        write_json_atomic(folder / EVAL_FILE, {**report, "previous": previous[:KEEP_PREVIOUS]})
        refresh_report(folder)


def refresh_report(folder: Path) -> None:
    """report.html shows the folder's latest eval: redraw it (a failure to draw is a warning, never a failed eval)."""
    with hold_output(folder / REPORT_FILE, "lorakit eval"):
        write_run_report_safely(folder)


def read_prompts(values: list[str]) -> list[str]:
    prompts: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            prompts += [line.strip() for line in read_text(path, DataError).splitlines() if line.strip()]
        else:
            prompts.append(value)
    return prompts


def run_eval(paths: list[Path], data: str | None = None, prefs: str | None = None, prompts: list[str] | None = None,
             with_base: bool = True, base_model: str | None = None, max_new_tokens: int = 48,
             tolerance: float = 0.01, tasks: list[str] | None = None, task_files: list[str] | None = None,
             limit: float | None = None, num_fewshot: int | None = None, chat_template: str = "auto",
             batch_size: int = 8, reward_options: RewardOptions | None = None) -> dict[str, Any]:
    """Score every candidate; `tasks` / `task_files` add lm-eval benchmarks (lorakit.eval.benchmarks); rewards
    score replies to a `prompts` data file (lorakit.eval.rewards)."""
    reward_options = reward_options or RewardOptions()
    if not data and not prefs and not prompts and not tasks and not task_files:
        raise ConfigError("nothing to evaluate", hint="give --data (SFT-style), --prefs (preference pairs), --prompts, "
                                                      "or --tasks (benchmarks)")
    candidates = collect_candidates(paths, with_base)
    with contextlib.ExitStack() as held:
        # eval writes eval.json (and redraws report.html) into each folder it scores: one writer at a time
        for folder in dict.fromkeys(f for f in map(result_folder, candidates) if f is not None):
            held.enter_context(hold_output(folder, "lorakit eval"))
        return evaluate(candidates, data, prefs, prompts, base_model, max_new_tokens, tolerance, tasks, task_files,
                        limit, num_fewshot, chat_template, batch_size, reward_options)


def evaluate(candidates: list[Candidate], data: str | None, prefs: str | None, prompts: list[str] | None,
             base_model: str | None, max_new_tokens: int, tolerance: float, tasks: list[str] | None,
             task_files: list[str] | None, limit: float | None, num_fewshot: int | None, chat_template: str,
             batch_size: int, reward_options: RewardOptions) -> dict[str, Any]:
    with_base = any(c.kind == "base" for c in candidates)
    location = base_location(candidates, base_model)
    if with_base and location is None:
        candidates = [c for c in candidates if c.kind != "base"]
    runs = [c.run for c in candidates if c.run is not None]
    reference_tokenizer = None
    if runs:
        from transformers import AutoTokenizer

        check_tokenizer(runs[0].path, f"run {runs[0].path}")
        reference_tokenizer = AutoTokenizer.from_pretrained(str(runs[0].path))
    run_data = runs[0].recipe.data if runs else None
    reward_eval = None
    # a prompt data file beside a GRPO run is scored with that run's rewards (a text file of prompts is shown)
    data_file = bool(prompts) and len(prompts) == 1 and Path(prompts[0]).suffix in (".jsonl", ".json", ".parquet",
                                                                                    ".csv")
    grpo_runs = [c.run for c in candidates if c.kind == "grpo" and c.run is not None]
    if reward_options.asked or (data_file and grpo_runs):
        reward_eval = plan_reward_eval(prompts or [], reward_options, grpo_runs)
        prompts = []  # the prompt file is the reward eval's, not a list of prompts to show side by side
    prompt_list = read_prompts(prompts or [])
    section = eval_section(run_data, data) if data else None
    plan = None
    if tasks or task_files:
        plan = plan_benchmarks(tasks or [], task_files or [], chat_template, limit, num_fewshot, batch_size,
                               stop=end_of_turn_strings(reference_tokenizer, candidates))
        contaminated = check_runs_against(runs, local_task_files(plan))
    for candidate in candidates:
        with err.status(f"Evaluating {candidate.name}..."):
            score_candidate(candidate, location, reference_tokenizer, candidates, section, prefs, prompt_list,
                            max_new_tokens, plan, reward_eval)
        gc.collect()  # the candidate's model, before the next one loads
    report: dict[str, Any] = {
        "candidates": [{"name": c.name, "kind": c.kind, "parent": c.parent, **c.scores,
                        **({"benchmarks": c.benchmarks} if c.benchmarks else {})} for c in candidates],
        "data": data,
        "prefs": prefs,
        "tolerance": tolerance,
        "regressions": [],
    }
    if data:
        report["regressions"] += regressions(candidates, "loss", False, tolerance)
    if prefs:
        # Reward accuracies are measured against different references (dpo vs sft, sft vs base), so they do not
        # compare across stages; the policy's own chosen-minus-rejected gap does.
        report["regressions"] += regressions(candidates, "logp_gap", True, tolerance)
    if plan is not None:
        report["benchmarks"] = plan.describe()
        report["contamination"] = contaminated  # runs that trained on rows of the local benchmark files
        for metric, higher in directions([c.benchmarks for c in candidates]).items():
            report["regressions"] += regressions(candidates, metric, higher, tolerance)
    if reward_eval is not None:
        report["rewards"] = {"prompts": reward_eval.source, "rewards": [r.describe() for r in reward_eval.rewards],
                             "samples": reward_eval.samples, "temperature": reward_eval.temperature,
                             "max_new_tokens": reward_eval.max_new_tokens, "pass_threshold": reward_eval.threshold,
                             "examples": {c.name: c.reward_examples for c in candidates}}
        for metric, higher in metric_directions(reward_eval).items():
            report["regressions"] += regressions(candidates, metric, higher, tolerance)
    if prompt_list:
        report["generations"] = [{"prompt": p, **{c.name: c.generations[i] for c in candidates}}
                                 for i, p in enumerate(prompt_list)]
    save_results(candidates, report)
    return report


def end_of_turn_strings(reference_tokenizer, candidates: list[Candidate]) -> list[str]:
    """The text of the token that ends an assistant turn, where generation tasks must stop (e.g. <|im_end|>)."""
    tokenizer = reference_tokenizer
    if tokenizer is None:
        folder = next((c.path for c in candidates if c.kind == "merged" and c.path is not None), None)
        if folder is None:
            return []
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not getattr(tokenizer, "chat_template", None):
        return []
    eot = end_of_turn_token(tokenizer)
    return [eot[1]] if eot else []


def eval_section(run_data: DataSection | None, data: str) -> DataSection:
    """The run's own data settings (format, masks, template use, length) pointed at the eval file."""
    if run_data is None:
        return DataSection(train=data)
    return run_data.model_copy(update={"train": data, "eval": None, "val_size": 0.0, "max_rows": None,
                                       "subset": None, "split": "train"})
