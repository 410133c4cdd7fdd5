"""What `lorakit run` checks before its first stage starts, so a pipeline that cannot finish fails at once and
leaves nothing behind.

The recipe schema already refuses bad values in every section (a GGUF type, a shard size, a data field). Here come
the checks that need the disk: the root is a folder that can be written and is not the current folder; no stage
folder is or holds an input of the pipeline (its recipe, data, chat template, model folder), which the stages'
internal `--force` would otherwise replace; each training stage's data loads and converts (no tokenizer needed);
a GGUF type that needs llama.cpp has it; and `pipeline.json`, the pipeline's memory of finished stages, reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.data.benchmark_files import benchmark_rows
from lorakit.data.inspect import check_prompt_data
from lorakit.data.preference import canonical_pairs
from lorakit.data.sft import canonical_rows
from lorakit.errors import ConfigError, LorakitError, RunError
from lorakit.export.gguf_export import check_type
from lorakit.io import check_can_write, check_inputs, check_output_path, read_json
from lorakit.outputs import TRAINING_STAGES, Damaged
from lorakit.rewards import resolve_rewards, reward_files


def pipeline_inputs(recipe) -> list[Path]:
    """Every file or folder a pipeline reads from disk."""
    paths: list[Path] = []
    if getattr(recipe, "_file", None) is not None:
        paths.append(Path(recipe._file))
    for name in TRAINING_STAGES:
        section = getattr(recipe, name)
        if section is None or name not in recipe.stages:
            continue
        for value in (section.data.train, section.data.eval, section.model.name_or_path, section.model.chat_template):
            if value and "{" not in value and Path(value).expanduser().exists():
                paths.append(Path(value).expanduser())
        if name == "grpo":
            paths += reward_files(section.grpo.rewards)
    return paths


def check_root(root: Path) -> None:
    check_output_path(root, "pipeline root")
    if root.exists() and not root.is_dir():
        raise RunError(f"pipeline root {root} exists and is a file", hint="set root to a folder (or a new path)")
    if not root.exists():
        check_can_write(root, force=False, what="pipeline root")


def read_state(state_file: Path) -> dict[str, Any]:
    """pipeline.json: {stage: {"key", "status", ...}}; a damaged one is named (deleting it only re-checks stages)."""
    if not (state_file.exists() or state_file.is_symlink()):
        return {}
    hint = f"delete {state_file}: the next run re-runs the stages it cannot prove up to date"
    try:
        state = read_json(state_file, RunError)
    except LorakitError as exc:
        raise Damaged(f"pipeline {state_file.parent}", state_file.name, getattr(exc, "what", exc.message),
                      hint) from None
    for stage, record in state.items():
        if not isinstance(record, dict) or not isinstance(record.get("key", ""), str):
            raise Damaged(f"pipeline {state_file.parent}", state_file.name, f"the record of stage {stage!r} is not "
                          "an object with a key", hint)
    return state


def check_stages(pipeline, selected: list[str]) -> None:
    """Everything the selected stages will need, checked before the first one starts."""
    recipe = pipeline.recipe
    inputs = pipeline_inputs(recipe)
    for stage in selected:
        for folder in pipeline.folders(stage):
            check_output_path(folder, f"{stage} stage folder")
            check_inputs(folder, inputs, f"{stage} stage folder")
    check_inputs(pipeline.state_file, inputs, "pipeline state")
    if "quantize" in selected:
        for target in recipe.quantize.resolved_targets():
            if target.format == "gguf":
                check_type(target.type)
    for stage in TRAINING_STAGES:
        if stage in selected:
            check_stage_data(stage, getattr(recipe, stage))
    if "grpo" in selected:  # a reward file that does not load fails the pipeline before its first stage trains
        resolve_rewards(recipe.grpo.grpo.rewards, recipe.grpo.grpo.max_completion_length)


def check_stage_data(stage: str, section) -> None:
    """The stage's data loads and converts to its format, and its benchmark files open (the tokenized lint and the
    data screen run when the stage starts)."""
    data = section.data
    if not data.train:
        raise ConfigError(f"{stage}.data.train is not set", hint=f"give the {stage} stage its data file")
    for source in (data.train, data.eval):
        if source:
            if stage == "grpo":
                one = data.model_copy(update={"train": source, "eval": None, "val_size": 0.0,
                                              "max_rows": data.max_rows if source == data.train else None})
                check_prompt_data(one, None)
            else:
                (canonical_rows if stage == "sft" else canonical_pairs)(
                    source, data, data.max_rows if source == data.train else None)
    for file in data.contamination_against:
        next(iter(benchmark_rows(file, f"{stage}.data.contamination_against")), None)
