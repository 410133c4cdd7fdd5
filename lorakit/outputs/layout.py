"""Every file and folder name lorakit writes, in one place.

An output is a folder: a training run (`lorakit sft`, `lorakit dpo`), a merged model, an export, a copied base. Each
carries `manifest.json` (what it is, where it came from); a training run also carries its resolved recipe, its
metrics log and its checkpoints. While an output is written it lives in a hidden folder beside its target: a
training run in `.NAME.partial` (resumable), anything else in `.NAME.tmp-*`; a replaced output waits in
`.NAME.old-*` for the moment the new one is in place; `.NAME.lock` says who is writing NAME (lorakit.outputs.lock).
"""

from __future__ import annotations

from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.io import OUTPUT_MARK, read_json

MANIFEST_FILE = OUTPUT_MARK  # what makes a folder lorakit's (lorakit.io refuses to replace a folder without it)
RECIPE_FILE = "lorakit.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
EVAL_FILE = "eval.json"
REPORT_FILE = "report.html"
README_FILE = "README.md"
# The Trainer writes a checkpoint's files one by one, trainer_state.json last, none of them atomically: lorakit marks
# a checkpoint complete with this file once the Trainer has finished saving it (lorakit.outputs.integrity).
COMPLETE_MARK = "lorakit-complete"
# A tokenizer a server or `from_pretrained` loads: at least one of these must sit beside a model or adapter.
TOKENIZER_LOAD_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# What a merge copies from the base and the run so the merged model loads and chats like the trained one.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
WEIGHTS_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"

# `lorakit run`: the pipeline's memory of finished stages, and each stage's folder under the root.
STATE_FILE = "pipeline.json"
PIPELINE_FOLDERS = {"sft": "sft", "dpo": "dpo", "merge": "merged", "quantize": "export"}


def staging_path(path: str | Path) -> Path:
    """Where an unfinished training run for `path` lives until it is complete."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def lock_path(path: str | Path) -> Path:
    """The lock file that says who is writing `path` (beside it, so it covers staging, rename and the result)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def merged_folder(run: str | Path) -> Path:
    """Where `lorakit merge RUN` writes by default, and where quantize looks for a run's merge."""
    run = Path(run)
    return run.parent / f"{run.name}-merged"


def export_folder(source: str | Path, fmt: str) -> Path:
    """Where `lorakit quantize SOURCE --format FMT` writes by default."""
    source = Path(source)
    return source.with_name(f"{source.name}-{fmt}")


def merged_weight_files(folder: Path) -> list[str] | None:
    """What a complete merged model holds: its config and every weights file its index names (one
    model.safetensors when unsharded). None when the index cannot be read (the merge is then never complete)."""
    index = folder / WEIGHTS_INDEX
    if not index.is_file():
        return ["config.json", SINGLE_WEIGHTS]
    try:
        weight_map = read_json(index, LorakitError)["weight_map"]
        return ["config.json", *sorted(set(weight_map.values()))]
    except (LorakitError, KeyError, TypeError, AttributeError):
        return None


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_LOAD_FILES)


def has_manifest(folder: Path) -> bool:
    """Whether `folder` is an output lorakit wrote (finished or not: a manifest is written as a run starts)."""
    return (Path(folder) / MANIFEST_FILE).is_file()
