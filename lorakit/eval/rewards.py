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
from typing import Any

from lorakit.chat_template import stop_token_ids
from lorakit.data.prompts import ROW_COLUMN, columns_table
from lorakit.errors import ConfigError
from lorakit.rewards import Reward, score_completions, total_reward

VERIFIABLE = ("exact_answer", "math", "regex", "format", "json")
BATCH = 16


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
    from lorakit.config import DataSection
    from lorakit.data.load import load_rows
    from lorakit.data.prompts import load_prompt_rows
    from lorakit.rewards import check_reward_columns, check_reward_values

    data = DataSection(train=prompts_file)
    loaded = load_rows(prompts_file, data.subset, data.split, None)
    dataset, _ = load_prompt_rows(loaded, "auto", {}, None)
    check_reward_columns(rewards, dataset.column_names, prompts_file)
    table = columns_table(dataset)
    check_reward_values(rewards, table, dataset[ROW_COLUMN], prompts_file)
    return RewardEval(prompts_file, dataset["prompt"], table, dataset[ROW_COLUMN], rewards, samples, temperature,
                      max_new_tokens, threshold)


def generate(model, tokenizer, prompts: list[list[dict[str, str]]], max_new_tokens: int, samples: int = 0,
             temperature: float = 1.0, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Replies (text, ids) to every prompt: one greedy each (samples=0), or `samples` sampled each, in order."""
    import torch

    from lorakit.chat_template import render

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stops = stop_token_ids(tokenizer)
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
