"""A reward function from the user's own Python file (`--reward my_rewards.py:score`).

The file runs the user's code, so it is named explicitly and never found by search. Its function has TRL's reward
signature: `score(prompts, completions, completion_ids, **kwargs) -> list[float]`, the data's extra columns arriving
by name. Everything that can go wrong is one `RewardError` naming the file, the function and, once it scores, the
data row: a file that is missing or does not import, a missing or non-callable function, a column it asks for that
the data lacks, and a call that raises or returns anything but one finite number per completion.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lorakit.data.prompts import ROW_COLUMN
from lorakit.errors import RewardError

# What TRL passes every reward function besides the data's columns (trl 1.16: GRPOTrainer._calculate_rewards).
TRL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric",
                 "environments")


def is_user_reward(name: str) -> bool:
    file, _, function = name.rpartition(":")
    return bool(file) and file.endswith(".py") and function.isidentifier()


@dataclass
class UserFunction:
    file: Path
    name: str
    function: Callable[..., Any]
    takes_kwargs: bool
    accepted: frozenset[str]
    needs: tuple[str, ...]  # data columns it asks for by name without a default

    @property
    def label(self) -> str:
        return f"{self.file}:{self.name}"


def load_user_function(spec: str) -> UserFunction:
    """Import FILE.py and find FUNCTION in it; every failure is a RewardError naming both."""
    file_text, _, name = spec.rpartition(":")
    file = Path(file_text).expanduser()
    label = f"{file_text}:{name}"
    if not file.is_file():
        raise RewardError(f"reward {label}: {file_text} is not a file",
                          hint="give the path of a .py file and the function in it, e.g. --reward my_rewards.py:score")
    module_name = f"lorakit_user_reward_{abs(hash(str(file.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, file)
    if loader is None or loader.loader is None:
        raise RewardError(f"reward {label}: {file_text} cannot be imported as Python", hint="name a .py file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up by name
    try:
        loader.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise RewardError(f"reward {label}: {file_text} line {exc.lineno}: {exc.msg}",
                          hint="fix the syntax error in the reward file") from None
    except BaseException as exc:  # noqa: BLE001 - the user's module-level code: any failure is theirs to fix
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RewardError(f"reward {label}: importing {file_text} raised {describe(exc)}",
                          hint="fix the reward file (it must import on its own, as `python FILE` would)") from None
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module_name)
        raise RewardError(f"reward {label}: {file_text} has no function '{name}'",
                          hint=f"functions in it: {', '.join(defined)}" if defined else
                          "define it: def score(prompts, completions, **kwargs) -> list[float]")
    if not callable(function):
        raise RewardError(f"reward {label}: '{name}' in {file_text} is a {type(function).__name__}, not a function",
                          hint="name a function: def score(prompts, completions, **kwargs) -> list[float]")
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters) or not parameters
    accepted = frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    needs = tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.default is p.empty and p.name not in TRL_ARGUMENTS)
    return UserFunction(file, name, function, takes_kwargs, accepted, needs)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def row_numbers(kwargs: dict[str, Any], count: int) -> list[int | None]:
    rows = kwargs.get(ROW_COLUMN)
    return list(rows) if isinstance(rows, list) and len(rows) == count else [None] * count


def where(rows: list[int | None], index: int) -> str:
    row = rows[index] if index < len(rows) else None
    return f"row {row}" if row is not None else f"completion {index + 1} of the batch"


def checked_values(values: Any, count: int, label: str, rows: list[int | None]) -> list[float]:
    """One finite float per completion, or a RewardError saying which row got what instead."""
    hint = "return one number (int or float) per completion, in order"
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # numpy arrays and torch tensors
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {label} returned {type(values).__name__} {short(values)}, not a list of numbers "
                          f"(scoring {where(rows, 0)})", hint=hint)
    if len(values) != count:
        raise RewardError(f"reward {label} returned {len(values)} value(s) for {count} completions (scoring "
                          f"{where(rows, 0)} and the {count - 1} after it)", hint=hint)
    out = []
    for index, value in enumerate(values):
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if value is None:
            raise RewardError(f"reward {label} returned None for {where(rows, index)}",
                              hint=hint + "; None is not 0: score every completion")
        if isinstance(value, (str, bytes)):
            raise RewardError(f"reward {label} returned a string ({short(value)}) for {where(rows, index)}",
                              hint=hint + "; convert it with float(...)")
        if not isinstance(value, (int, float)):
            raise RewardError(f"reward {label} returned a {type(value).__name__} for {where(rows, index)}", hint=hint)
        if not math.isfinite(value):
            raise RewardError(f"reward {label} returned {value} for {where(rows, index)}",
                              hint=hint + "; a NaN or infinite reward would poison every advantage of its group")
        out.append(float(value))
    return out


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def call_user_function(user: UserFunction, prompts: list, completions: list, completion_ids: list,
                       kwargs: dict[str, Any]) -> list[float]:
    """Call the user's function the way TRL calls a reward, check what comes back, and name the row on failure."""
    rows = row_numbers(kwargs, len(completions))
    arguments = {key: value for key, value in kwargs.items() if key != ROW_COLUMN}
    arguments.update(prompts=prompts, completions=completions, completion_ids=completion_ids)
    if not user.takes_kwargs:  # a function without **kwargs gets only what it names
        arguments = {key: value for key, value in arguments.items() if key in user.accepted}

    def call(args: dict[str, Any]):
        result = user.function(**args)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        return result

    try:
        values = call(arguments)
    except RewardError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: find the row it fails on
        index = failing_row(call, arguments, len(completions))
        raise RewardError(f"reward {user.label} raised {describe(exc)} on {where(rows, index)}",
                          hint="fix the function (it must score any completion, including empty or malformed "
                               "ones); run it on that row's prompt to reproduce") from None
    return checked_values(values, len(completions), user.label, rows)


def failing_row(call, arguments: dict[str, Any], count: int) -> int:
    """The first completion the function raises on alone (0 when none does alone: the batch as a whole fails)."""
    for index in range(count):
        single = {key: [value[index]] if isinstance(value, list) and len(value) == count else value
                  for key, value in arguments.items()}
        try:
            call(single)
        except Exception:  # noqa: BLE001
            return index
    return 0
