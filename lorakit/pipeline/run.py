"""`lorakit run`: sft -> dpo -> grpo -> merge -> quantize from one pipeline recipe, re-running only what changed.

Each stage writes its own folder under the pipeline's root and the next stage takes that folder, exactly as the
single commands do. A stage's identity is a hash of its resolved recipe section, its data's content and its parent
stage's identity; `ROOT/pipeline.json` remembers the identity each finished stage was built from. A re-run skips a
stage whose output is complete and whose identity is unchanged, resumes one that was interrupted (same identity,
checkpoint waiting), and re-runs one whose inputs changed, which changes the identity of everything after it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from lorakit.config import STAGE_ORDER, PipelineRecipe, recipe_to_dict
from lorakit.console import err, format_value
from lorakit.data.load import fingerprint_source
from lorakit.errors import ConfigError, LorakitError
from lorakit.export.calibration import CalibrationRequest
from lorakit.export.merge import merge_run
from lorakit.export.quantize import quantize_targets
from lorakit.io import write_json_atomic
from lorakit.outputs import TRAINING_STAGES, ExportManifest, Manifest, hold_output, open_output
from lorakit.outputs.layout import ADAPTER_FILES, PIPELINE_FOLDERS, STATE_FILE, merged_weight_files, staging_path
from lorakit.pipeline.checks import check_root, check_stages, read_state
from lorakit.report import write_pipeline_report
from lorakit.train.launch import run_training

FOLDERS = PIPELINE_FOLDERS


@dataclass
class StageOutcome:
    stage: str
    status: str  # ran | resumed | skipped | not selected | failed | not run
    path: str
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class PipelineResult:
    outcomes: list[StageOutcome]
    failure: LorakitError | None = None
    report: Path | None = None  # ROOT/report.html over the stages' folders

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.outcomes]


class Pipeline:
    def __init__(self, recipe: PipelineRecipe, callbacks: tuple = ()):
        self.recipe = recipe
        self.callbacks = tuple(callbacks)  # extra TrainerCallbacks for the training stages
        self.root = Path(recipe.root)
        self.state_file = self.root / STATE_FILE
        self.state: dict[str, Any] = read_state(self.state_file)

    def folder(self, stage: str) -> Path:
        return self.root / FOLDERS[stage]

    def folders(self, stage: str) -> list[Path]:
        """Every folder a stage writes: one, except a quantize stage with several targets (ROOT/export-LABEL each;
        a single target keeps ROOT/export)."""
        if stage == "quantize":
            targets = self.recipe.quantize.resolved_targets()
            if len(targets) > 1:
                return [self.root / f"{FOLDERS[stage]}-{t.label}" for t in targets]
        return [self.folder(stage)]

    def shown(self, stage: str) -> str:
        return ", ".join(str(f) for f in self.folders(stage))

    def previous(self, stage: str) -> str | None:
        """The stage before `stage` in this pipeline (whose output `stage` consumes)."""
        stages = self.recipe.stages
        index = stages.index(stage)
        return stages[index - 1] if index > 0 else None

    def source_of(self, stage: str) -> Path:
        """The folder `stage` takes as input (the recipe schema makes every pipeline start with a training stage, so merge
        and quantize always have one): quantize after merge takes the merged model; after sft/dpo it merges the run
        itself."""
        return self.folder(self.previous(stage))

    # --- identities ---------------------------------------------------------------------------------------------

    def identity(self, stage: str, parent_key: str | None) -> str:
        section: Any = getattr(self.recipe, stage)
        inputs: dict[str, Any] = {"stage": stage, "parent": parent_key}
        if stage in TRAINING_STAGES:
            resolved = recipe_to_dict(section)
            resolved.pop("output_dir", None)
            if stage != "sft" and self.previous(stage) in TRAINING_STAGES:
                resolved.pop("from_run", None)  # the parent key stands for it
            data = section.data
            inputs["section"] = resolved
            inputs["data"] = [fingerprint_source(data.train, data.subset, data.split), fingerprint_source(data.eval)]
        else:
            inputs["section"] = recipe_to_dict(section)
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def is_complete(self, stage: str) -> bool:
        """A finished manifest and every file the stage's output is used through (a deleted GGUF or adapter means
        the stage must run again, whatever its manifest says)."""
        for folder in self.folders(stage):
            try:
                manifest = open_output(folder).manifest
            except LorakitError:  # unreadable, or being written by another command: not a finished stage
                return False
            if manifest is None or not manifest.complete:
                return False
            names = output_files(stage, folder, manifest)
            if not names or not all((folder / name).is_file() for name in names):
                return False
        return True

    def has_partial(self, stage: str) -> bool:
        return any(staging_path(folder).is_dir() for folder in self.folders(stage))

    def save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, self.state)

    # --- running ------------------------------------------------------------------------------------------------

    def run(self, only: list[str] | None = None, from_stage: str | None = None, force: bool = False) -> PipelineResult:
        """Run the selected stages, holding the pipeline's root for the whole run (a second `lorakit run` on the same
        root is refused while this one is alive)."""
        with hold_output(self.root, "lorakit run"):
            return self._run(only, from_stage, force)

    def _run(self, only: list[str] | None, from_stage: str | None, force: bool) -> PipelineResult:
        stages = self.recipe.stages
        for name in (only or []) + ([from_stage] if from_stage else []):
            if name not in stages:
                raise ConfigError(f"stage '{name}' is not in this pipeline (stages: {', '.join(stages)})",
                                  hint="use one of the recipe's stages")
        selected_stages = [s for i, s in enumerate(stages)
                           if (not only or s in only) and (not from_stage or i >= stages.index(from_stage))]
        check_root(self.root)
        check_stages(self, selected_stages)
        root_was_there = self.root.exists()
        outcomes: list[StageOutcome] = []
        parent_key: str | None = None
        failure: LorakitError | None = None
        for index, stage in enumerate(stages):
            folder = self.folder(stage)
            if failure is not None:
                outcomes.append(StageOutcome(stage, "not run", self.shown(stage)))
                continue
            key = self.identity(stage, parent_key)
            selected = (not only or stage in only) and (not from_stage or index >= stages.index(from_stage))
            recorded = self.state.get(stage, {})
            if not selected:
                # Downstream identities build on what is actually there.
                parent_key = recorded.get("key", key) if self.is_complete(stage) else key
                outcomes.append(StageOutcome(stage, "not selected", self.shown(stage),
                                             metrics=recorded.get("metrics", {})))
                continue
            if not force and recorded.get("key") == key and recorded.get("status") == "complete" \
                    and self.is_complete(stage):
                err.print(f"[bold]{stage}[/bold]: up to date, skipped ({folder})")
                outcomes.append(StageOutcome(stage, "skipped", self.shown(stage), metrics=recorded.get("metrics", {})))
                parent_key = key
                continue
            resume = not force and recorded.get("key") == key and self.has_partial(stage)
            if index > 0 and not self.is_complete(self.previous(stage)):
                failure = ConfigError(f"stage '{stage}' needs the output of '{self.previous(stage)}', which is missing",
                                      hint=f"run the pipeline from '{self.previous(stage)}' first")
                outcomes.append(StageOutcome(stage, "failed", self.shown(stage), error=failure.message))
                continue
            err.rule(f"{stage}{' (resuming)' if resume else ''}")
            self.state[stage] = {"key": key, "status": "running"}
            self.save_state()
            started = time.time()
            try:
                metrics = STAGE_RUNNERS[stage](self, folder, resume)
            except LorakitError as exc:
                failure = exc
                self.state[stage] = {"key": key, "status": "interrupted" if self.has_partial(stage) else "failed"}
                self.save_state()
                outcomes.append(StageOutcome(stage, "failed", self.shown(stage), time.time() - started,
                                             error=exc.message))
                continue
            seconds = time.time() - started
            self.state[stage] = {"key": key, "status": "complete", "metrics": metrics, "seconds": round(seconds, 1),
                                 "path": str(folder)}
            self.save_state()
            outcomes.append(StageOutcome(stage, "resumed" if resume else "ran", self.shown(stage), seconds, metrics))
            parent_key = key
        if failure is not None and not root_was_there:
            self.remove_if_nothing_ran()
        return PipelineResult(outcomes, failure, write_pipeline_report(self.root, [f for s in stages
                                                                                 for f in self.folders(s)]))

    def remove_if_nothing_ran(self) -> None:
        """A first run that failed before any stage wrote anything leaves no root folder behind."""
        left = [p for p in self.root.iterdir() if p.name != STATE_FILE and not p.name.startswith(f".{STATE_FILE}")]
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# One small runner per stage: build the single-stage call the user would make by hand.


def output_files(stage: str, folder: Path, manifest: Manifest) -> list[str]:
    """The files a finished stage's output is used through (none: never complete, the stage runs again)."""
    if stage in TRAINING_STAGES:
        return list(ADAPTER_FILES)
    if stage == "merge":
        return merged_weight_files(folder) or []
    return list(manifest.files) if isinstance(manifest, ExportManifest) else []


def _pick(summary: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: summary[k] for k in keys if k in summary}


def run_sft_stage(pipeline: Pipeline, folder: Path, resume: bool) -> dict[str, Any]:
    recipe = pipeline.recipe.sft.model_copy(update={"output_dir": str(folder)})
    recipe._file = pipeline.recipe._file  # --force inside the pipeline never replaces a folder holding the recipe
    result = run_training("sft", recipe, force=not resume, resume=resume, resume_hint=_rerun_hint(pipeline),
                          callbacks=pipeline.callbacks)
    return _pick(result.summary, "steps", "final_loss", "final_eval_loss", "warnings")


def run_continuing_stage(stage: str, pipeline: Pipeline, folder: Path, resume: bool) -> dict[str, Any]:
    """DPO and GRPO continue the training stage before them in the pipeline (sft, or dpo after sft), if there is one."""
    update: dict[str, Any] = {"output_dir": str(folder)}
    before = pipeline.previous(stage)
    if before in TRAINING_STAGES:
        update["from_run"] = str(pipeline.folder(before))
    recipe = getattr(pipeline.recipe, stage).model_copy(update=update)
    recipe._file = pipeline.recipe._file
    result = run_training(stage, recipe, force=not resume, resume=resume, resume_hint=_rerun_hint(pipeline),
                          callbacks=pipeline.callbacks)
    return {k: v for k, v in result.summary.items() if k.startswith(("final_", "steps")) or k == "warnings"}


def run_merge_stage(pipeline: Pipeline, folder: Path, resume: bool) -> dict[str, Any]:
    section = pipeline.recipe.merge
    result = merge_run(pipeline.source_of("merge"), folder, dtype=section.dtype, base_mode=section.base,
                       max_shard_size=section.max_shard_size, force=True)
    return dict(result.gap or {})


def run_quantize_stage(pipeline: Pipeline, folder: Path, resume: bool) -> dict[str, Any]:
    section = pipeline.recipe.quantize
    results = quantize_targets(pipeline.source_of("quantize"), section.resolved_targets(), force=True,
                               verify=section.verify, folders=pipeline.folders("quantize"),
                               calibration=CalibrationRequest(section.calibration_data, section.calibration_rows))
    if len(results) == 1:
        return dict(results[0].summary or {})
    return {"targets": [r.summary for r in results]}


STAGE_RUNNERS: dict[str, Callable[[Pipeline, Path, bool], dict[str, Any]]] = {
    "sft": run_sft_stage,
    "dpo": partial(run_continuing_stage, "dpo"),
    "grpo": partial(run_continuing_stage, "grpo"),
    "merge": run_merge_stage,
    "quantize": run_quantize_stage,
}
assert tuple(STAGE_RUNNERS) == STAGE_ORDER


def _rerun_hint(pipeline: Pipeline) -> str:
    return "lorakit " + shlex.join(a for a in sys.argv[1:] if a != "--force") + "  (the pipeline resumes by itself)"


KEY_METRICS = {"final_loss": "loss", "final_eval_loss": "eval loss", "final_reward_accuracies": "reward acc",
               "final_reward_margins": "reward margin", "final_eval_reward_accuracies": "eval reward acc",
               "final_reward": "reward", "final_eval_reward": "eval reward", "mean_kl": "KL vs source",
               "top1_agreement": "top-1", "size_mb": "MB", "tokenization_mismatches": "token mismatches"}


def pipeline_table(result: PipelineResult):
    """The final table of `lorakit run`: per stage its status, time, headline metrics and folder."""
    table = Table(title="pipeline", title_justify="left")
    for column in ("stage", "status", "time", "key metrics", "output"):
        table.add_column(column)
    styles = {"ran": "green", "resumed": "green", "skipped": "cyan", "failed": "red"}
    for o in result.outcomes:
        # the headline figures only; --json and each folder's manifest keep the rest
        lines = [f"{KEY_METRICS[k]} {format_value(v)}" for k, v in o.metrics.items() if k in KEY_METRICS]
        for one in o.metrics.get("targets") or []:  # several quantize targets: a line each
            lines.append(f"{one['target']}: " + ", ".join(f"{KEY_METRICS[k]} {format_value(v)}"
                                                          for k, v in one.items() if k in KEY_METRICS))
        metrics = "\n".join(lines) or (o.error or "")
        status = f"[{styles.get(o.status, 'dim')}]{o.status}[/]"
        table.add_row(o.stage, status, f"{o.seconds:.0f}s" if o.seconds else "-", metrics, o.path)
    return table
