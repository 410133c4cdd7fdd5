"""Which adapter a run keeps: the last one, or the best by a held-out metric, with early stopping.

`train.keep: best` uses the Trainer's own machinery: a checkpoint at every evaluation, `load_best_model_at_end` with
`metric_for_best_model` (so checkpoint rotation never deletes the best one, and a resumed run knows which it is from
trainer_state.json), and transformers' EarlyStoppingCallback for `train.early_stopping_patience` (its counter is
saved in checkpoints too). The run's adapter is then the best checkpoint's, and the manifest says which step and
why. Whatever is kept, the run's summary says where eval loss was lowest and warns when training went well past it.
"""

from __future__ import annotations

from typing import Any

# The final eval loss this far above its minimum means training went on past the point where held-out loss turned up.
OVERFIT_RISE = 0.10
# Held-out metrics where higher is better (the rest, losses, are lower-is-better). GRPO adds its reward here.
HIGHER_IS_BETTER = {"eval_rewards/accuracies", "eval_rewards/margins", "eval_reward", "eval_rewards/mean"}


def best_metric(train) -> str:
    """The metric train.keep: best and early stopping compare, as metrics.jsonl names it (auto: the stage's own,
    its train section's AUTO_BEST_METRIC: eval_loss for SFT and DPO, eval_reward for GRPO)."""
    metric = getattr(train, "best_metric", "auto")
    return getattr(train, "AUTO_BEST_METRIC", "eval_loss") if metric == "auto" else metric


def keep_arguments(train, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields for train.keep / early stopping (none for keep: last without early stopping)."""
    if not has_eval or (train.keep == "last" and not train.early_stopping_patience):
        return {}
    metric = best_metric(train)
    every = train.eval_steps or train.save_steps
    return {
        # a checkpoint at every evaluation, so the best step has one (transformers also needs save = k x eval)
        "save_steps": every,
        "eval_steps": every,
        "metric_for_best_model": metric,
        "greater_is_better": metric in HIGHER_IS_BETTER,
        "load_best_model_at_end": train.keep == "best",
    }


def keep_callbacks(train, has_eval: bool) -> list:
    if not has_eval or not train.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience)]


def eval_turn(records: list[dict[str, Any]], key: str = "eval_loss") -> dict[str, Any] | None:
    """Where a held-out loss was lowest and how far the last evaluation is above it (None without two evals)."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if len(points) < 2:
        return None
    step, lowest = min(points, key=lambda p: (p[1], p[0]))
    last_step, last = points[-1]
    rise = (last - lowest) / abs(lowest) if lowest else 0.0
    return {"metric": key, "min_step": step, "min": lowest, "final_step": last_step, "final": last,
            "rise": round(rise, 4), "evaluations": len(points)}


def kept_record(train, state, records: list[dict[str, Any]], has_eval: bool) -> dict[str, Any]:
    """The manifest's `kept` entry: the policy, the step whose adapter the run holds, and why."""
    last = state.global_step
    stopped = bool(train.early_stopping_patience) and has_eval and last < state.max_steps
    record: dict[str, Any] = {"policy": train.keep, "step": last, "last_step": last, "stopped_early": stopped}
    if train.keep == "best" and has_eval:
        metric = best_metric(train)
        record["metric"] = metric
        best_step = getattr(state, "best_global_step", None)
        if state.best_model_checkpoint is not None and best_step:
            evaluations = sum(1 for r in records if metric in r)
            word = "highest" if metric in HIGHER_IS_BETTER else "lowest"
            record.update(step=int(best_step), value=state.best_metric,
                          why=f"{word} {metric} of {evaluations} evaluation(s): {state.best_metric:.4f} at step "
                              f"{best_step}" + (f"; stopped early at step {last} (no improvement in "
                                                f"{train.early_stopping_patience} evaluations)" if stopped else ""))
            return record
        record["why"] = "no evaluation ran with a checkpoint: kept the last step"
        return record
    record["why"] = "train.keep: last" + (f"; stopped early at step {last}" if stopped else "")
    return record


def overfit_warning(turn: dict[str, Any] | None, kept: dict[str, Any]) -> str | None:
    """A warning when the last evaluation is more than OVERFIT_RISE above the minimum and the last step was kept
    (train.keep: best keeps the best step, and its log line says where that was)."""
    if turn is None or turn["rise"] <= OVERFIT_RISE or kept.get("policy") == "best":
        return None
    return (f"the final {turn['metric']} ({turn['final']:.4f}, step {turn['final_step']}) is "
            f"{100 * turn['rise']:.0f}% above its minimum ({turn['min']:.4f} at step {turn['min_step']}): the adapter "
            f"kept (step {kept['step']}) trained past the point where held-out loss turned up; set train.keep: best "
            "(and train.early_stopping_patience) to keep the best step")
