"""Standard benchmarks and the user's own question sets through EleutherAI's lm-evaluation-harness (`lorakit[eval]`).

Every task is checked before any model loads: a registry name must exist (a typo gets "did you mean"), its data must
be reachable (offline, a hub dataset that is not in the datasets cache is one clear error naming the task), a local
jsonl set is checked row by row and written as a task YAML (`lorakit.eval.tasks`). Then each candidate is scored with
`lm_eval.simple_evaluate` on an `HFLM` wrapped around the model lorakit already loaded: the adapter over its base
without merging, a merged folder, a GGUF export through transformers' GGUF loader.

The chat template: lm-eval's published numbers for loglikelihood benchmarks (hellaswag, arc, mmlu) are measured on
raw text, so those run without it; generation tasks (gsm8k, ...) and the user's own sets, which are questions to an
assistant like the ones the run trained on, get the run's chat template (`--chat-template on|off` decides for all).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lorakit.console import info
from lorakit.errors import ConfigError, DataError, ResourceError
from lorakit.eval.tasks import is_local_task_file, write_local_task

INSTALL_HINT = "pip install 'lorakit[eval]'  (lm-evaluation-harness)"
# lm-eval metrics where lower is better, for groups whose results carry no higher_is_better of their own
LOWER_IS_BETTER = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"}


@dataclass
class TaskSpec:
    spec: str  # what lm-eval loads: a registry name or a YAML path
    name: str  # the task, group or tag name
    origin: str  # registry | task-file | local
    output_types: set[str]
    source: str | None = None  # the user's jsonl (local) or YAML (task-file)
    reported: list[str] = field(default_factory=list)  # results names: the task or group itself; a tag's tasks

    def wants_chat(self, mode: str) -> bool:
        if mode != "auto":
            return mode == "on"
        return self.origin == "local" or "generate_until" in self.output_types


@dataclass
class BenchmarkPlan:
    tasks: list[TaskSpec]
    task_manager: Any
    chat_template: str = "auto"  # auto | on | off
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int | str = 8
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What eval.json records about the benchmark settings."""
        return {"tasks": [{"name": t.name, "spec": t.spec, "origin": t.origin, "source": t.source,
                           "output_types": sorted(t.output_types), "reported": t.reported} for t in self.tasks],
                "chat_template": self.chat_template, "limit": self.limit, "num_fewshot": self.num_fewshot,
                "lm_eval": _lm_eval_version()}


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def require_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ResourceError("--tasks runs lm-evaluation-harness, which is not installed", hint=INSTALL_HINT)


@contextlib.contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every setting at INFO and warns that a loaded model ignores its loading arguments (lorakit loads
    the model on purpose): only its errors reach the terminal."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def split_specs(values: list[str]) -> list[str]:
    """--tasks a,b --tasks c -> [a, b, c]."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def plan_benchmarks(tasks: list[str], task_files: list[str] = (), chat_template: str = "auto",
                    limit: float | None = None, num_fewshot: int | None = None, batch_size: int | str = 8,
                    stop: list[str] = ()) -> BenchmarkPlan:
    """Check every task before a model loads; write the YAML of local question sets."""
    require_lm_eval()
    if chat_template not in ("auto", "on", "off"):
        raise ConfigError(f"--chat-template {chat_template!r} is not one of auto, on, off", hint="--chat-template auto")
    if limit is not None and limit <= 0:
        raise ConfigError(f"--limit {limit} leaves no questions", hint="a count (--limit 100) or a fraction (0.1)")
    specs = split_specs(list(tasks))
    registry, files, local = [], [Path(p) for p in task_files], []
    for spec in specs:
        if is_local_task_file(spec):
            local.append(write_local_task(spec, stop))
        elif spec.endswith((".yaml", ".yml")):
            files.append(Path(spec))
        else:
            registry.append(spec)
    for task in local:
        info(f"Task {task.name}: {task.rows} {task.kind.replace('_', ' ')} questions from {task.source}; its lm-eval "
             f"YAML is {task.yaml_path}")
    for file in files:
        if not file.is_file():
            raise ConfigError(f"--task-file {file} not found", hint="give an lm-eval task YAML")

    with quiet_lm_eval():
        from lm_eval.tasks import TaskManager

        # Indexing lm-eval's ~15,000 built-in task YAMLs takes tens of seconds: only when a registry name asks for it,
        # and once per process.
        manager = builtin_tasks() if registry else TaskManager(include_defaults=False)
        check_names(registry, manager)
        planned = [load_spec(manager, name, "registry", None) for name in registry]
        planned += [load_spec(manager, str(file.resolve()), "task-file", str(file)) for file in files]
        planned += [load_spec(manager, str(task.yaml_path), "local", str(task.source)) for task in local]
    names = [name for t in planned for name in t.reported]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"task {duplicates[0]} is given twice", hint="give each task once (local task names come "
                                                                       "from the file name)")
    return BenchmarkPlan(planned, manager, chat_template, limit, num_fewshot, batch_size)


@functools.lru_cache(maxsize=1)
def builtin_tasks():
    """lm-eval's TaskManager over its built-in tasks (an index of names; tasks are built afresh by each load)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def check_names(names: list[str], manager) -> None:
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
            raise ConfigError(
                f"--tasks {name} is not an lm-eval task, group or tag"
                + (f"; did you mean {', '.join(close)}?" if close else ""),
                hint=(f"--tasks {close[0]}" if close else "list them with: lm-eval ls tasks")
                + "; or give your own questions as a .jsonl file, or an lm-eval YAML with --task-file",
            )


def load_spec(manager, spec: str, origin: str, source: str | None) -> TaskSpec:
    """Build the task (lm-eval loads its dataset here): the task's name, its output types, or a clean error."""
    try:
        loaded = manager.load([spec])
    except Exception as exc:  # datasets/hub raise many types; mapped below by type where they have one
        raise task_error(spec if origin == "registry" else source or spec, exc) from None
    groups = loaded.get("groups") or {}
    tasks = loaded["tasks"]
    if groups:  # a group (mmlu) reports its aggregate under its own name
        top = [g for g in groups if not any(g in children for children in loaded.get("group_map", {}).values())]
        reported = [str(top[0] if top else next(iter(groups)))]
    else:  # one task, or a tag: each of its tasks reports on its own
        reported = [str(name) for name in tasks]
    output_types = {task.get_config("output_type") for task in tasks.values()}
    name = reported[0] if len(reported) == 1 else spec
    return TaskSpec(spec, name, origin, output_types, source, reported)


def is_unreachable(exc: BaseException) -> bool:
    """The hub (or the network) was needed and is not there: offline mode, no connection, a timeout."""
    from huggingface_hub import errors as hub

    network: tuple[type, ...] = (ConnectionError, TimeoutError, hub.OfflineModeIsEnabled, hub.LocalEntryNotFoundError)
    import importlib

    for transport in ("httpx", "httpx2"):  # the hub client's transport (huggingface_hub 1.x: httpx; 2.x: httpx2)
        with contextlib.suppress(ImportError):
            network += (importlib.import_module(transport).TransportError,)
    with contextlib.suppress(ImportError):  # datasets' own downloads
        import requests

        network += (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # the error and what it was raised from
        seen.add(id(cause))
        if isinstance(cause, network):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def task_error(what: str, exc: Exception) -> DataError:
    from datasets.exceptions import DatasetNotFoundError

    if is_unreachable(exc):
        return DataError(
            f"task {what} needs its dataset from the Hugging Face hub, which is offline or unreachable here",
            hint="run it once where the hub is reachable (datasets caches it; HF_DATASETS_OFFLINE=1 then works), or "
                 "save the data as .jsonl and pass it to --tasks (or an lm-eval YAML with dataset_path: json and "
                 "dataset_kwargs.data_files to --task-file)")
    if isinstance(exc, DatasetNotFoundError):
        return DataError(f"task {what}: its dataset was not found ({str(exc).splitlines()[0]})",
                         hint="check the task's dataset_path (a gated dataset needs `hf auth login`)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"task {what} could not be loaded by lm-eval: {first}",
                     hint="check the task file against lm-eval's task guide (lm-eval validate --tasks FILE)")


# ---------------------------------------------------------------------------------------------------------------
# Scoring one candidate


def run_benchmarks(plan: BenchmarkPlan, model, tokenizer) -> dict[str, Any]:
    """Every planned task on one loaded model: {task name: its metrics, stderrs, directions and settings}."""
    with quiet_lm_eval():
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        has_template = bool(getattr(tokenizer, "chat_template", None))
        if plan.chat_template == "on" and not has_template:
            raise ConfigError("--chat-template on, but the model's tokenizer has no chat template",
                              hint="--chat-template off (or auto)")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=plan.batch_size)
        by_chat: dict[bool, list[TaskSpec]] = {}
        for task in plan.tasks:
            by_chat.setdefault(task.wants_chat(plan.chat_template) and has_template, []).append(task)
        results: dict[str, Any] = {}
        for chat, tasks in by_chat.items():
            raw = simple_evaluate(model=lm, tasks=[t.spec for t in tasks], task_manager=plan.task_manager,
                                  num_fewshot=plan.num_fewshot, limit=plan.limit, apply_chat_template=chat,
                                  fewshot_as_multiturn=chat, log_samples=False, bootstrap_iters=1000)
            for task in tasks:
                for name in task.reported:
                    results[name] = task_result(raw, name, task.origin, chat)
    return results


def task_result(raw: dict[str, Any], name: str, origin: str, chat: bool) -> dict[str, Any]:
    values = raw["results"].get(name, {})
    directions = raw.get("higher_is_better", {}).get(name, {})
    metrics, stderr = {}, {}
    for key, value in values.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # alias, name, sample_len; "N/A" stderrs
        metric, _, filt = key.partition(",")
        label = metric if filt in ("none", "") else f"{metric}[{filt}]"
        (stderr if metric.endswith("_stderr") else metrics)[label.replace("_stderr", "")] = float(value)
    higher = {label: bool(directions.get(label.split("[")[0], label.split("[")[0] not in LOWER_IS_BETTER))
              for label in metrics}
    samples = raw.get("n-samples", {}).get(name) or {}
    return {"metrics": metrics, "stderr": stderr, "higher_is_better": higher,
            "samples": samples.get("effective"), "num_fewshot": raw.get("n-shot", {}).get(name),
            "chat_template": chat, "origin": origin}


def flat_scores(results: dict[str, Any]) -> dict[str, float]:
    """{"mc_facts/acc": 0.84, ...}: the form candidates' scores and the regression view use."""
    return {f"{name}/{metric}": value for name, result in results.items() for metric, value in result["metrics"].items()}


def directions(results_by_candidate: list[dict[str, Any]]) -> dict[str, bool]:
    """Whether higher is better, per flat metric name, over every candidate's results."""
    found: dict[str, bool] = {}
    for results in results_by_candidate:
        for name, result in results.items():
            for metric, higher in result["higher_is_better"].items():
                found.setdefault(f"{name}/{metric}", higher)
    return found
