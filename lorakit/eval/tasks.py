"""A user's own question set (jsonl) as an lm-evaluation-harness task: lorakit checks the rows and writes the task YAML.

Two shapes, one per file, decided by the first row:
- multiple choice: `{"question": ..., "choices": [...], "answer": 2}` (answer: the index, or the text of a choice).
  Scored by lm-eval's `acc` / `acc_norm`: the choice the model finds most likely, given the question, must be the
  answer.
- generation: `{"question": ..., "answer": "..."}`. The model answers greedily; `exact_match` against the answer
  (case and punctuation ignored).
`prompt` is accepted for `question`. The YAML lands in lorakit's cache (the path is printed) and reads the jsonl in
place, so editing it and passing it back with `--task-file` is how to change the prompt or the metrics; lm-eval itself
runs it too (`lm-eval run --tasks PATH.yaml`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.cache import cache_dir
from lorakit.errors import DataError
from lorakit.io import write_text_atomic

QUESTION_KEYS = ("question", "prompt")


@dataclass(frozen=True)
class LocalTask:
    name: str  # the lm-eval task name (from the file name)
    source: Path  # the user's jsonl
    yaml_path: Path  # the task YAML lorakit wrote
    kind: str  # multiple_choice | generate_until
    rows: int


def is_local_task_file(spec: str) -> bool:
    return spec.endswith((".jsonl", ".json")) and not spec.startswith(("hf://",))


def task_name(path: Path) -> str:
    """An lm-eval task name from the file name: lowercase letters, digits and underscores."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", path.stem).strip("_").lower()
    return name or "local_task"


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"task file {path} not found", hint="give a .jsonl file of questions, or a task name")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})",
                            hint="one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a row must be a JSON object", hint=EXPECTED)
        rows.append((number, row))
    if not rows:
        raise DataError(f"task file {path} has no rows", hint=EXPECTED)
    return rows


EXPECTED = ('multiple choice rows: {"question": "...", "choices": ["...", "..."], "answer": 0}; '
            'generation rows: {"question": "...", "answer": "..."}')


def check_rows(path: Path, rows) -> str:
    """The task's kind, after checking every row has that shape (the first bad row is named)."""
    first = rows[0][1]
    kind = "multiple_choice" if "choices" in first else "generate_until"
    key = question_key(rows)
    for number, row in rows:
        question = row.get(key)
        where = f"{path}:{number}"
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: no question (a non-empty '{key}' string, like the first row's)", hint=EXPECTED)
        if "answer" not in row:
            raise DataError(f"{where}: no 'answer'", hint=EXPECTED)
        answer = row["answer"]
        if kind == "generate_until":
            if "choices" in row:
                raise DataError(f"{where}: has 'choices' but the first row has none: one file is one kind of task",
                                hint="put multiple-choice and generation questions in separate files")
            if not isinstance(answer, str) or not answer.strip():
                raise DataError(f"{where}: 'answer' must be a non-empty string for a generation task", hint=EXPECTED)
            continue
        choices = row.get("choices")
        if choices is None:
            raise DataError(f"{where}: no 'choices', but the first row has them: one file is one kind of task",
                            hint="put multiple-choice and generation questions in separate files")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings", hint=EXPECTED)
        if isinstance(answer, bool) or not (
                (isinstance(answer, int) and 0 <= answer < len(choices)) or (isinstance(answer, str) and answer in choices)):
            raise DataError(f"{where}: 'answer' {answer!r} is neither an index into its {len(choices)} choices nor "
                            "one of them", hint="answer: the 0-based index of the right choice, or its exact text")
    return kind


def question_key(rows) -> str:
    return "question" if "question" in rows[0][1] else "prompt"


def task_config(name: str, source: Path, kind: str, key: str, stop: list[str]) -> dict[str, Any]:
    """lm-eval's task schema (0.4.x): the jsonl is read by datasets' json builder, in place."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(source.resolve())}},
        "test_split": "test",
        "output_type": kind,
        "doc_to_text": "{{" + key + "}}",
        "metadata": {"version": 1.0, "written_by": "lorakit", "source": str(source.resolve())},
    }
    if kind == "multiple_choice":
        config.update({
            "doc_to_choice": "{{choices}}",
            # an index as is; a text answer as the index of that choice
            "doc_to_target": "{{answer if answer is number else choices.index(answer)}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        })
    else:
        config.update({
            "doc_to_target": "{{answer}}",
            # greedy, one turn: stop at a blank line or the chat template's end-of-turn
            "generation_kwargs": {"until": ["\n\n", *stop], "do_sample": False, "max_gen_toks": 128},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": True, "regexes_to_ignore": [r"^\s+", r"\s+$"]}],
        })
    return config


def write_local_task(path: str | Path, stop: list[str] = (), folder: Path | None = None) -> LocalTask:
    """Check a jsonl question set and write its lm-eval task YAML (under lorakit's cache unless `folder` is given)."""
    import yaml

    source = Path(path)
    rows = read_rows(source)
    kind = check_rows(source, rows)
    name = task_name(source)
    config = task_config(name, source, kind, question_key(rows), list(stop))
    text = ("# Written by lorakit from " + str(source.resolve()) + ". Edit it and pass it back with --task-file, or run\n"
            "# it with lm-eval itself: lm-eval run --model hf --model_args pretrained=MODEL --tasks THIS_FILE\n"
            + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    digest = hashlib.sha256((text + source.read_text()).encode()).hexdigest()[:12]
    target = (folder or cache_dir() / "tasks" / f"{name}-{digest}")
    target.mkdir(parents=True, exist_ok=True)
    yaml_path = target / f"{name}.yaml"
    write_text_atomic(yaml_path, text)
    return LocalTask(name, source, yaml_path, kind, len(rows))
