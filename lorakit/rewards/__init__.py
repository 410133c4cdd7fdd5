"""What a GRPO completion is scored by: built-in verifiable rewards, the user's own Python, or a reward model.

`grpo.rewards` (or `--reward a,b`) names them; `resolve_rewards` turns the names into `Reward`s without loading any
weights (a user file is imported, a reward-model folder is only checked), so every problem is reported before the
policy loads. Each reward is then handed to TRL's GRPOTrainer as an ordinary reward function (`trl_reward`), and
`lorakit eval --reward` scores held-out completions with the very same functions (`score_completions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorakit.config import REWARD_NAMES
from lorakit.data.checks import row_numbers as listed_rows
from lorakit.data.prompts import ROW_COLUMN, columns_table
from lorakit.errors import DataError, RewardError
from lorakit.io import read_json
from lorakit.rewards import builtin
from lorakit.rewards.reward_model import RewardModelScore, check_reward_model, is_reward_model_folder
from lorakit.rewards.user import (
    UserFunction,
    call_user_function,
    checked_values,
    is_user_reward,
    load_user_function,
    row_numbers,
)

DEFAULT_ANSWER_COLUMN = "answer"


@dataclass
class Reward:
    name: str  # unique: the metric is rewards/<name>/mean
    weight: float
    kind: str  # a built-in's name, "user" or "model"
    needs: tuple[str, ...]  # data columns it reads
    function: Callable[..., list[float]]
    source: str  # as the recipe names it
    user: UserFunction | None = field(default=None, repr=False)

    def describe(self) -> str:
        weight = "" if self.weight == 1.0 else f" x{self.weight:g}"
        return f"{self.name}{weight}"


def resolve_rewards(specs, max_completion_length: int, device: str = "cpu") -> list[Reward]:
    """`grpo.rewards` -> Rewards, failing on the first that cannot work (a reward model is checked, not loaded)."""
    if not specs:
        raise RewardError("no reward to train with", hint="name one: --reward exact_answer (or grpo.rewards)")
    rewards: list[Reward] = []
    for spec in specs:
        rewards.append(resolve_reward(spec, max_completion_length, device))
    seen: dict[str, int] = {}
    for reward in rewards:  # two format rewards with different patterns get format and format_2
        seen[reward.name] = seen.get(reward.name, 0) + 1
        if seen[reward.name] > 1:
            reward.name = f"{reward.name}_{seen[reward.name]}"
    return rewards


def resolve_reward(spec, max_completion_length: int, device: str) -> Reward:
    name = spec.name
    if name in ("exact_answer", "math"):
        column = spec.column or DEFAULT_ANSWER_COLUMN
        make = builtin.exact_answer if name == "exact_answer" else builtin.math
        return Reward(name, spec.weight, name, (column,), make(column), name)
    if name == "regex":
        return Reward(name, spec.weight, name, (), builtin.regex(spec.pattern), name)
    if name == "format":
        return Reward(name, spec.weight, name, (), builtin.format_reward(spec.pattern), name)
    if name == "json":
        return Reward(name, spec.weight, name, (), builtin.json_reward(load_schema(spec.schema_)), name)
    if name == "length":
        return Reward(name, spec.weight, name, (), builtin.length(max_completion_length, spec.soft_punish_cache),
                      name)
    if is_user_reward(name):
        user = load_user_function(name)
        return Reward(user.name, spec.weight, "user", user.needs, user.function, name, user)
    if is_reward_model_folder(name):
        folder = Path(name).expanduser()
        check_reward_model(folder)
        return Reward(folder.name, spec.weight, "model", (), RewardModelScore(folder, device), name)
    looks_like_file = name.endswith(".py") or ".py:" in name
    raise RewardError(
        f"reward {name!r} is not a built-in, a FILE.py:FUNCTION or a folder",
        hint=("name the function after the file: my_rewards.py:score" if looks_like_file else
              f"built-ins: {', '.join(REWARD_NAMES)}; your own: path/to/file.py:function; a reward model: its folder"))


def reward_files(specs) -> list[Path]:
    """The reward files, reward-model folders and JSON Schema files a run reads: inputs, like its data."""
    found = []
    for spec in specs:
        for value in (spec.name.rpartition(":")[0] if is_user_reward(spec.name) else spec.name, spec.schema_):
            if isinstance(value, str) and value not in REWARD_NAMES and Path(value).expanduser().exists():
                found.append(Path(value).expanduser())
    return found


def load_schema(schema: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The json reward's JSON Schema: inline, or a .json file; checked as a schema before training."""
    if schema is None:
        return None
    if isinstance(schema, str):
        value = read_json(Path(schema).expanduser(), RewardError, hint="give a JSON Schema file or an inline mapping")
        where = schema
    else:
        value, where = schema, "the inline schema"
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(value).check_schema(value)
    except exceptions.SchemaError as exc:
        raise RewardError(f"reward json: {where} is not a valid JSON Schema: {exc.message}",
                          hint="see https://json-schema.org for the format") from None
    return value


# ---------------------------------------------------------------------------------------------------------------
# Checks against the data, before any weights load


def check_reward_columns(rewards: list[Reward], columns: list[str], source: str) -> None:
    """Every column a reward reads is in the data (exact_answer's `answer`, a user function's named arguments)."""
    problems = []
    for reward in rewards:
        missing = [c for c in reward.needs if c not in columns]
        if missing:
            problems.append(f"reward {reward.source} reads column(s) {', '.join(missing)}")
    if problems:
        shown = [c for c in columns if c != ROW_COLUMN]
        hint = "add the column, map yours with data.columns"
        if any(r.kind in ("exact_answer", "math") for r in rewards):
            hint += ", or point the reward at it: {name: exact_answer, column: solution}"
        raise DataError(f"{source}: " + "; ".join(problems) + f" that the data lacks (it has {', '.join(shown)})",
                        hint=hint)


def check_reward_values(rewards: list[Reward], table: dict[str, list[Any]], rows: list[int], source: str) -> None:
    """A column a reward reads holds a value on every row."""
    for reward in rewards:
        for column in reward.needs:
            empty = [rows[i] for i, value in enumerate(table[column])
                     if value is None or (isinstance(value, str) and not value.strip())]
            if empty:
                raise DataError(f"{source}: column '{column}' (read by reward {reward.source}) is empty in "
                                f"{len(empty)} row(s): {listed_rows([r - 1 for r in empty])}",
                                hint="fill those rows or remove them")


def check_rows_for(rewards: list[Reward]):
    """The data check GRPO's prompt loading runs: columns present and filled, user functions answering."""

    def check(dataset, source: str) -> None:
        check_reward_columns(rewards, dataset.column_names, source)
        table = columns_table(dataset)
        check_reward_values(rewards, table, dataset[ROW_COLUMN], source)
        probe_user_rewards(rewards, dataset["prompt"], table, dataset[ROW_COLUMN])

    return check


def probe_user_rewards(rewards: list[Reward], prompts: list[Any], table: dict[str, list[Any]],
                       rows: list[int]) -> None:
    """Call each user function once on the first rows with an empty completion, before any weights load: a function
    that raises or answers wrongly then fails in seconds, not after the model has loaded and generated."""
    count = min(2, len(prompts))
    if count == 0:
        return
    conversational = isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": ""}] if conversational else "" for _ in range(count)]
    columns = {key: values[:count] for key, values in table.items()}
    columns[ROW_COLUMN] = rows[:count]
    for reward in rewards:
        if reward.user is None:
            continue
        try:
            call_user_function(reward.user, prompts[:count], completions, [[] for _ in range(count)], columns)
        except RewardError as exc:
            raise RewardError(f"{exc.message} (probed before training with an empty completion)", exc.hint) from None


# ---------------------------------------------------------------------------------------------------------------
# Scoring


class TRLReward:
    """A Reward as TRL's GRPOTrainer calls it: `f(prompts, completions, completion_ids, **columns)`, the result
    checked to be one finite number per completion (a RewardError naming the row otherwise)."""

    def __init__(self, reward: Reward, on_scores: Callable[[str, dict[str, Any], list[float]], None] | None = None):
        self.reward = reward
        self.__name__ = reward.name  # TRL logs rewards/<__name__>/mean
        self.on_scores = on_scores

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        reward = self.reward
        if reward.user is not None:
            values = call_user_function(reward.user, prompts, completions, completion_ids, kwargs)
        else:
            columns = {k: v for k, v in kwargs.items() if k != ROW_COLUMN}
            raw = reward.function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            values = checked_values(raw, len(completions), reward.source, row_numbers(kwargs, len(completions)))
        if self.on_scores is not None:
            self.on_scores(reward.name, {"prompts": prompts, "completions": completions, **kwargs}, values)
        return values


def score_completions(rewards: list[Reward], prompts: list[Any], completions: list[Any],
                      completion_ids: list[list[int]], columns: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Each reward's values for the completions (outside training: `lorakit eval --reward`)."""
    return {reward.name: TRLReward(reward)(prompts, completions, completion_ids, **columns) for reward in rewards}


def total_reward(rewards: list[Reward], scores: dict[str, list[float]]) -> list[float]:
    """The weighted sum GRPO normalizes, per completion."""
    count = len(next(iter(scores.values()))) if scores else 0
    return [sum(r.weight * scores[r.name][i] for r in rewards) for i in range(count)]
