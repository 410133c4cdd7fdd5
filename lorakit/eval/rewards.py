"""`lorakit eval --prompts held-out.jsonl --reward ...`: what GRPO optimizes, measured on prompts it never saw.

Each candidate answers every held-out prompt greedily once and, with `--samples K`, K times at the sampling
temperature; the rewards (the same functions GRPO trains with, lorakit.rewards) score every reply. Reported per
candidate: the mean total reward of the greedy replies (`reward`) and of the samples (`reward_sampled`), each reward's
greedy mean (`reward/<name>`), and pass rates: greedy (`pass`) and pass@K (`pass@K`: at least one of K samples
passes). A reply passes when every verifiable built-in (exact_answer, math, regex, format, json) gives it full marks,
or, with `--pass-threshold T`, when its total reward is at least T. Every candidate samples from the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.chat_template import Stops, render
from lorakit.config import DataSection, RewardSpec
from lorakit.data.load import load_rows
from lorakit.data.prompts import ROW_COLUMN, columns_table, load_prompt_rows
from lorakit.errors import ConfigError
from lorakit.rewards import (
    Reward,
    check_reward_columns,
    check_reward_values,
    resolve_rewards,
    score_completions,
    total_reward,
)

VERIFIABLE = ("exact_answer", "math", "regex", "format", "json")
BATCH = 16


@dataclass(frozen=True)
class RewardOptions:
    """What `lorakit eval` was asked about rewards (--reward, --samples, --temperature, --pass-threshold,
    --max-new-tokens)."""

    rewards: list[str] | None = None  # reward names; None: those of the GRPO run evaluated
    samples: int = 0
    temperature: float = 1.0
    pass_threshold: float | None = None
    max_new_tokens: int | None = None

    @property
    def asked(self) -> bool:
        return self.rewards is not None or bool(self.samples)


@dataclass
class RewardEval:
    """The held-out prompts and how to score replies to them."""

    source: str
    prompts: list[list[dict[str, str]]]
    columns: dict[str, list[Any]]
    rows: list[int]
    rewards: list[Reward]
    samples: int
    temperature: float
    max_new_tokens: int
    threshold: float | None
    seed: int = 0

    def passes(self, scores: dict[str, list[float]], totals: list[float]) -> list[bool] | None:
        if self.threshold is not None:
            return [t >= self.threshold for t in totals]
        verifiable = [r for r in self.rewards if r.kind in VERIFIABLE]
        if not verifiable:
            return None
        return [all(scores[r.name][i] >= 1.0 for r in verifiable) for i in range(len(totals))]


def load_reward_eval(prompts_file: str, rewards: list[Reward], samples: int, temperature: float,
                     max_new_tokens: int, threshold: float | None) -> RewardEval:
    """The prompt file in any format `lorakit grpo` reads, checked against the rewards (columns they read)."""
    data = DataSection(train=prompts_file)
    loaded = load_rows(prompts_file, data.subset, data.split, None)
    dataset, _ = load_prompt_rows(loaded, "auto", {}, None)
    check_reward_columns(rewards, dataset.column_names, prompts_file)
    table = columns_table(dataset)
    check_reward_values(rewards, table, dataset[ROW_COLUMN], prompts_file)
    return RewardEval(prompts_file, dataset["prompt"], table, dataset[ROW_COLUMN], rewards, samples, temperature,
                      max_new_tokens, threshold)


def plan_reward_eval(prompts: list[str], options: RewardOptions, grpo_runs: list) -> RewardEval:
    """The held-out prompt file and the rewards: --reward's, or else those of the GRPO run being evaluated (with
    their weights and options); replies as long as that run's completions unless --max-new-tokens says."""
    if len(prompts) != 1 or not Path(prompts[0]).is_file():
        raise ConfigError("--reward scores replies to the prompts of one file: give --prompts FILE.jsonl",
                          hint="the file's rows are prompts (prompt / messages / instruction) with the columns the "
                               "rewards read, as for lorakit grpo")
    if options.rewards:
        specs = [RewardSpec.model_validate(name) for name in options.rewards]
    elif grpo_runs:
        specs = list(grpo_runs[-1].recipe.grpo.rewards)
    else:
        raise ConfigError("--samples needs rewards to score the replies with", hint="add --reward exact_answer")
    length = options.max_new_tokens or (grpo_runs[-1].recipe.grpo.max_completion_length if grpo_runs else 128)
    return load_reward_eval(prompts[0], resolve_rewards(specs, length), options.samples, options.temperature, length,
                            options.pass_threshold)


def generate(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int, samples: int = 0,
             temperature: float = 1.0, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Replies (text, ids) to every prompt: one greedy each (samples=0), or `samples` sampled each, in order."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    # the model's generation config lists its own stops (a run's base, a merged model's full list)
    stops = Stops.of(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None)).ids
    texts: list[str] = []
    ids: list[list[int]] = []
    if samples:
        torch.manual_seed(seed)  # every candidate draws from the same stream
    try:
        for start in range(0, len(prompts), BATCH):
            batch = [render(tokenizer, p, add_generation_prompt=True) for p in prompts[start:start + BATCH]]
            inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=bool(samples),
                                        temperature=temperature if samples else None, top_p=None, top_k=None,
                                        num_return_sequences=max(samples, 1), eos_token_id=stops,
                                        pad_token_id=tokenizer.pad_token_id)
            for row in output[:, inputs["input_ids"].shape[1]:].tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                kept = row[:cut]
                ids.append(kept)
                texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return texts, ids


def score_replies(spec: RewardEval, texts: list[str], ids: list[list[int]], repeat: int):
    prompts = [p for p in spec.prompts for _ in range(repeat)]
    columns = {k: [v for v in values for _ in range(repeat)] for k, values in spec.columns.items()}
    columns[ROW_COLUMN] = [r for r in spec.rows for _ in range(repeat)]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    scores = score_completions(spec.rewards, prompts, completions, ids, columns)
    return scores, total_reward(spec.rewards, scores)


def reward_scores(model, tokenizer, spec: RewardEval) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(scores, a few greedy replies with their rewards) for one candidate."""
    if not spec.prompts:
        raise ConfigError(f"{spec.source} has no prompts", hint="give a prompt file with rows")
    texts, ids = generate(model, tokenizer, spec.prompts, spec.max_new_tokens)
    scores, totals = score_replies(spec, texts, ids, 1)
    result: dict[str, float] = {"reward": sum(totals) / len(totals)}
    for reward in spec.rewards:
        result[f"reward/{reward.name}"] = sum(scores[reward.name]) / len(totals)
    passed = spec.passes(scores, totals)
    if passed is not None:
        result["pass"] = sum(passed) / len(passed)
    if spec.samples:
        k = spec.samples
        texts_k, ids_k = generate(model, tokenizer, spec.prompts, spec.max_new_tokens, k, spec.temperature, spec.seed)
        scores_k, totals_k = score_replies(spec, texts_k, ids_k, k)
        result["reward_sampled"] = sum(totals_k) / len(totals_k)
        passed_k = spec.passes(scores_k, totals_k)
        if passed_k is not None:
            result[f"pass@{k}"] = sum(any(passed_k[i * k:(i + 1) * k]) for i in range(len(spec.prompts))) / len(
                spec.prompts)
            result["pass_sampled"] = sum(passed_k) / len(passed_k)
    examples = [{"row": spec.rows[i], "reply": texts[i], "reward": totals[i]} for i in range(min(5, len(texts)))]
    return result, examples


def metric_directions(spec: RewardEval) -> dict[str, bool]:
    """The metrics the regression view compares (all higher-is-better)."""
    names = ["reward", "pass"]
    if spec.samples:
        names += ["reward_sampled", f"pass@{spec.samples}"]
    return {name: True for name in names}
