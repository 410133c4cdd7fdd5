"""Training runs: a run being written (`RunFolder`) and a finished one read back (`Run`, `read_run`).

A training run works in `.NAME.partial` (resolved recipe, manifest, metrics.jsonl and checkpoints land there as
training goes). Only when training has finished and the adapter, tokenizer and model card are written is it renamed
to NAME. An interrupted run stays `.partial` and `--resume` continues it; without `--resume` or `--force` lorakit
refuses to touch it, and a finished run is never overwritten without `--force`.

`read_run` gives a `Run` whose recipe is the validated `SFTRecipe | DPORecipe` (never a dict) and whose manifest is
the typed `TrainingRunManifest`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lorakit.compat import checkpoint_rng_files
from lorakit.config import DPORecipe, SFTRecipe, load_recipe, parse_yaml, recipe_to_yaml
from lorakit.console import info
from lorakit.errors import LorakitError, RunError
from lorakit.io import (
    check_can_write,
    check_inputs,
    check_output_path,
    parse_json,
    read_text,
    refuse_unsafe,
    replace_dir,
    write_bytes_atomic,
    write_text_atomic,
)
from lorakit.outputs.integrity import Damaged, check_checkpoint, check_run_files, checkpoint_is_complete
from lorakit.outputs.layout import (
    ADAPTER_FILES,
    CHECKPOINTS_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    staging_path,
)
from lorakit.outputs.lock import check_not_being_written
from lorakit.outputs.manifest import (
    Manifest,
    ParentRecord,
    TrainingRunManifest,
    UnknownStage,
    parse_manifest,
    read_manifest_data,
    write_manifest,
)

# ---------------------------------------------------------------------------------------------------------------
# A run being written


@dataclass
class RunFolder:
    """A run being written. `path` is where the finished run will live."""

    path: Path
    mode: str = "fresh"  # fresh | resume
    # resume: the staged files as they were before this attempt, put back if it fails before saving a new checkpoint
    _saved: dict[str, bytes | None] = field(default_factory=dict, repr=False)
    _resume_step: int | None = field(default=None, repr=False)

    @property
    def staging(self) -> Path:
        return staging_path(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.staging / CHECKPOINTS_DIR

    @property
    def owner(self) -> str:
        """How errors name this run."""
        return f"interrupted run {self.path}"

    def _staged(self, name: str) -> str:
        return f"{self.staging.name}/{name}"

    @classmethod
    def open(cls, path: str | Path, force: bool = False, resume: bool = False,
             inputs: Iterable[str | Path] = ()) -> "RunFolder":
        """Decide between a fresh start and a resume, refusing anything that would lose work silently.

        Nothing is written yet: a run that fails its data or model checks leaves no trace. A resume checks every
        staged file it will read (recipe, manifest, metrics, the checkpoint) first, so a damaged one is reported
        before anything loads or changes.
        """
        run = cls(check_output_path(path, "run folder"))
        staging_exists = run.staging.is_dir()
        if resume and staging_exists:
            check_inputs(run.path, inputs, "run folder")
            run.mode = "resume"
            run.check_resumable_files()
            return run
        if resume and not force and (run.path / MANIFEST_FILE).is_file():
            raise RunError(f"{run.path} is a finished run: there is nothing to resume",
                           hint="to train it again from the start, pass --force instead of --resume")
        if resume:
            info(f"No interrupted run in {run.path}: starting a fresh one")
        if staging_exists and not force:
            step = run.latest_step()
            raise RunError(
                f"an interrupted run is waiting in {run.path}"
                + (f" (checkpoint at step {step})" if step else " (no checkpoint yet)"),
                hint="pass --resume to continue it, or --force to discard it and start over",
            )
        check_can_write(run.path, force, what="run folder", inputs=inputs)
        return run

    def check_resumable_files(self) -> None:
        """Everything a resume reads from the staging folder, read once now: a damaged file is named here."""
        self.read_staged_recipe()
        self.read_staged_manifest()
        self.read_metrics(torn_tail_ok=True)
        incomplete = self.incomplete_checkpoints()
        checkpoint = self.latest_checkpoint()
        if incomplete:
            info(f"Skipping {', '.join(p.name for p in incomplete)}: not completely saved (the run stopped while "
                 f"saving it)" + (f"; resuming from {checkpoint.name}" if checkpoint else "; no earlier checkpoint"))
        if checkpoint is not None:
            check_checkpoint(checkpoint, self.owner)
        self._resume_step = self.latest_step()

    def begin(self) -> None:
        """Create the staging folder (a fresh run replaces any stale one, which open() allowed only with --force).
        A resume keeps it, remembering the files this attempt rewrites, so a failed attempt changes nothing."""
        refuse_unsafe(self.path)
        try:
            if self.mode == "fresh":
                if self.staging.exists():
                    shutil.rmtree(self.staging)
                self.staging.mkdir(parents=True)
            else:
                self._saved = {name: (self.staging / name).read_bytes() if (self.staging / name).is_file() else None
                               for name in (RECIPE_FILE, MANIFEST_FILE, METRICS_FILE)}
        except OSError as exc:
            raise RunError(f"run folder {self.path} cannot be written: {exc.strerror or exc}",
                           hint="choose an output path on a writable disk") from None

    def abandon(self) -> None:
        """After a failure: keep the staging folder only if it holds a checkpoint worth resuming; a resume that
        failed before saving a new checkpoint puts back the recipe, manifest and metrics it found."""
        if not self.staging.exists():
            return
        if self.mode == "fresh":
            if self.latest_checkpoint() is None:
                refuse_unsafe(self.staging)
                shutil.rmtree(self.staging, ignore_errors=True)
            return
        if self._saved and self.latest_step() == self._resume_step:
            for name, content in self._saved.items():
                file = self.staging / name
                if content is None:
                    file.unlink(missing_ok=True)
                else:
                    write_bytes_atomic(file, content)

    def _numbered_checkpoints(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob("checkpoint-*")
                 if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def latest_checkpoint(self, processes: int = 1) -> Path | None:
        """The newest checkpoint saved completely: marked by lorakit once the Trainer finished saving it (or, from a
        run before the marks, one whose files all read back), with the RNG state of each of `processes` training
        processes (a process killed while saving leaves its file missing)."""
        rng_files = checkpoint_rng_files(processes) if processes > 1 else ()
        complete = [p for p in self._numbered_checkpoints()
                    if checkpoint_is_complete(p) and all((p / name).is_file() for name in rng_files)]
        return complete[-1] if complete else None

    def incomplete_checkpoints(self, processes: int = 1) -> list[Path]:
        """Checkpoints newer than the latest complete one: a crash while saving (kill -9, out of memory)."""
        latest = self.latest_checkpoint(processes)
        step = int(latest.name.split("-")[-1]) if latest else -1
        return [p for p in self._numbered_checkpoints() if int(p.name.split("-")[-1]) > step]

    def latest_step(self) -> int | None:
        checkpoint = self.latest_checkpoint()
        return int(checkpoint.name.split("-")[-1]) if checkpoint else None

    def write_recipe(self, recipe) -> None:
        write_text_atomic(self.staging / RECIPE_FILE, recipe_to_yaml(recipe))

    def read_staged_recipe(self) -> dict[str, Any] | None:
        """The interrupted run's recipe as saved (a dict: it is compared section by section with the new one)."""
        file = self.staging / RECIPE_FILE
        if not (file.exists() or file.is_symlink()):
            return None
        try:
            data = parse_yaml(read_text(file, RunError), self._staged(RECIPE_FILE))
        except LorakitError as exc:
            raise damaged(self.owner, self._staged(RECIPE_FILE), exc) from None
        if not isinstance(data, dict):
            raise damaged(self.owner, self._staged(RECIPE_FILE), "not a mapping of recipe sections")
        return data

    def write_manifest(self, manifest: TrainingRunManifest) -> None:
        write_manifest(self.staging, manifest)

    def read_staged_manifest(self) -> TrainingRunManifest | None:
        """The interrupted run's manifest (None before one was written)."""
        try:
            data = read_manifest_data(self.staging, self.owner)
            manifest = None if data is None else parse_manifest(data, self.owner)
        except Damaged as exc:
            raise Damaged(self.owner, self._staged(MANIFEST_FILE), exc.what) from None
        except UnknownStage as exc:
            raise Damaged(self.owner, self._staged(MANIFEST_FILE), f"stage {exc.stage!r} is not a training stage") \
                from None
        if manifest is not None and not isinstance(manifest, TrainingRunManifest):
            raise Damaged(self.owner, self._staged(MANIFEST_FILE), f"stage {manifest.stage!r} is not a training stage")
        return manifest

    @property
    def metrics_file(self) -> Path:
        return self.staging / METRICS_FILE

    def read_metrics(self, torn_tail_ok: bool = False) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_file, self.owner, self._staged(METRICS_FILE), torn_tail_ok)

    def trim_metrics(self, step: int) -> None:
        """On resume, drop log lines from after the checkpoint: those steps are trained again (and a last line cut
        short by a crash goes with them)."""
        if not self.metrics_file.exists():
            return
        kept = [json.dumps(r) for r in self.read_metrics(torn_tail_ok=True) if r.get("step", 0) <= step]
        write_text_atomic(self.metrics_file, "".join(line + "\n" for line in kept))

    def finish(self) -> Path:
        """Rename the finished staging folder into place (replacing an older run only now, if --force)."""
        replace_dir(self.staging, self.path)
        return self.path


def damaged(owner: str, file: str, problem: "LorakitError | str", hint: str | None = None) -> RunError:
    """'OWNER is damaged: FILE: WHAT' (lorakit.outputs.integrity.Damaged), from a read error or a description."""
    what = problem if isinstance(problem, str) else getattr(problem, "what", None) or problem.message
    return Damaged(owner, file, what, hint)


def read_metrics(file: Path, owner: str | None = None, name: str = METRICS_FILE,
                 torn_tail_ok: bool = False) -> list[dict[str, Any]]:
    """The run's log, one JSON object per line. A last line cut short by a crash is dropped when `torn_tail_ok` (a
    resume trains those steps again); any other unreadable line means the file is damaged."""
    if not (file.exists() or file.is_symlink()):
        return []
    owner = owner or f"run {file.parent}"
    try:
        lines = read_text(file, RunError).splitlines()
    except LorakitError as exc:
        raise damaged(owner, name, exc) from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_json(line, name, RunError, expect=dict, line=number))
        except LorakitError as exc:
            if torn_tail_ok and number == len(lines):
                break
            raise damaged(owner, f"{name} line {number}", exc) from None
    return records


# ---------------------------------------------------------------------------------------------------------------
# A finished run


@dataclass
class Run:
    """A finished training run: its validated recipe, its manifest and its metrics."""

    path: Path
    recipe: SFTRecipe | DPORecipe
    manifest: TrainingRunManifest
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.manifest.stage

    @property
    def base_model(self) -> str:
        """Where the base model loaded from (read_run checked that the manifest names it)."""
        return self.manifest.base_model.location  # type: ignore[union-attr,return-value]

    @property
    def method(self) -> str:
        return self.recipe.method

    @property
    def precision(self) -> str:
        return self.manifest.precision or "fp32"

    @property
    def finished_at(self) -> str | None:
        return self.manifest.finished_at

    @property
    def has_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    @property
    def parent_path(self) -> Path | None:
        parent = self.manifest.parent
        return Path(parent.path) if parent is not None and parent.path else None

    def parent_record(self) -> ParentRecord:
        """How a run that continues from this one records it (a DPO run's SFT run)."""
        dataset = self.manifest.dataset
        return ParentRecord(path=str(self.path.resolve()), stage=self.stage, finished_at=self.manifest.finished_at,
                            dataset=dataset.fingerprint if dataset is not None else None)

    def missing_adapter_files(self) -> list[str]:
        return [name for name in ADAPTER_FILES if not (self.path / name).is_file()]


def check_manifest(manifest: Manifest, owner: str) -> TrainingRunManifest:
    """What later commands need from a training run's manifest: it is one, and it names its base model."""
    assert isinstance(manifest, TrainingRunManifest)
    base = manifest.base_model
    if base is None or not base.name or not base.location:
        raise Damaged(owner, MANIFEST_FILE, "base_model has no name and location")
    return manifest


def read_run(path: str | Path, expect_stage: tuple[str, ...] | None = None) -> Run:
    """Open a finished run folder, with errors that say what is wrong with it: a file cut short, overwritten or
    edited into something else is 'run X is damaged: FILE: WHAT' (lorakit.outputs.integrity), never a library's
    traceback; a run another command is still writing is refused, named."""
    path = Path(path)
    staging = staging_path(path)
    owner = f"run {path}"
    check_not_being_written(path)
    if path.is_symlink() and not path.exists():
        raise RunError(f"run folder {path} is a broken symbolic link or a link loop", hint="check the path")
    if not path.exists():
        if staging.is_dir():
            raise RunError(f"run {path} did not finish (an interrupted run is in {staging.name})",
                           hint="finish it with the same command plus --resume")
        raise RunError(f"run folder {path} not found", hint="check the path")
    manifest_file, recipe_file = path / MANIFEST_FILE, path / RECIPE_FILE
    present = [f for f in (manifest_file, recipe_file) if f.exists() or f.is_symlink()]
    if not path.is_dir() or not present:
        raise RunError(f"{path} is not a lorakit run folder (no {MANIFEST_FILE} / {RECIPE_FILE})",
                       hint="pass a folder written by lorakit sft or lorakit dpo")
    if manifest_file not in present:
        raise Damaged(owner, MANIFEST_FILE, "missing")
    data = read_manifest_data(path, owner) or {}
    if data.get("status") != "complete":
        raise RunError(f"run {path} is not complete (status: {data.get('status')!r})",
                       hint="finish it with --resume, or re-run it")
    try:
        manifest = parse_manifest(data, owner)
    except UnknownStage as exc:
        manifest, stage = None, exc.stage
    else:
        stage = manifest.stage if manifest is not None else None
    if not isinstance(manifest, TrainingRunManifest):
        raise RunError(f"{path} is a '{stage}' folder, not a training run", hint="pass the folder of an sft or dpo run")
    if recipe_file not in present:
        raise Damaged(owner, RECIPE_FILE, "missing")
    check_manifest(manifest, owner)
    try:
        recipe = load_recipe(manifest.stage, recipe_file)
    except LorakitError as exc:
        what = getattr(exc, "what", None) or exc.message.removeprefix(f"{recipe_file}: ")
        raise Damaged(owner, RECIPE_FILE, f"not a valid {manifest.stage} recipe ({what})") from None
    run = Run(path=path, recipe=recipe, manifest=manifest)
    if expect_stage and run.stage not in expect_stage:
        raise RunError(f"{path} is a '{run.stage}' run, expected {' or '.join(expect_stage)}",
                       hint="pass the folder of the matching stage")
    check_run_files(path, owner)
    run.metrics = read_metrics(path / METRICS_FILE, owner)
    return run
