"""Run folders: everything a later step needs, written so that a folder under its final name is always complete.

A training run works in a hidden sibling folder `.NAME.partial` (resolved recipe, manifest, metrics.jsonl and
checkpoints land there as training goes). Only when training has finished and the adapter, tokenizer and model
card are written is it renamed to NAME. An interrupted run stays `.partial` and `--resume` continues it; without
`--resume` or `--force` lorakit refuses to touch it, and a finished run is never overwritten without `--force`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from lorakit.errors import RunError
from lorakit.fsutil import OUTPUT_MANIFEST, check_can_write, replace_dir, write_json_atomic, write_text_atomic

RECIPE_FILE = "lorakit.yaml"
MANIFEST_FILE = OUTPUT_MANIFEST
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from lorakit import __version__

    versions = {"lorakit": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "gguf"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class RunFolder:
    """A run being written. `path` is where the finished run will live."""

    path: Path
    mode: str = "fresh"  # fresh | resume

    @property
    def staging(self) -> Path:
        return self.path.parent / f".{self.path.name}.partial"

    @property
    def checkpoints(self) -> Path:
        return self.staging / CHECKPOINTS_DIR

    @classmethod
    def open(cls, path: str | Path, force: bool = False, resume: bool = False,
             inputs: Iterable[str | Path] = ()) -> "RunFolder":
        """Decide between a fresh start and a resume, refusing anything that would lose work silently.

        Nothing is written yet: a run that fails its data or model checks leaves no trace.
        """
        run = cls(Path(path))
        staging_exists = run.staging.is_dir()
        if resume and staging_exists:
            run.mode = "resume"
            return run
        if resume and not force and (run.path / MANIFEST_FILE).is_file():
            raise RunError(f"{run.path} is a finished run: there is nothing to resume",
                           hint="to train it again from the start, pass --force instead of --resume")
        if resume:
            from lorakit.console import info

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

    def begin(self) -> None:
        """Create the staging folder (a fresh run replaces any stale one, which open() allowed only with --force)."""
        if self.mode == "fresh":
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir(parents=True)

    def abandon(self) -> None:
        """After a failure: keep the staging folder only if it holds a checkpoint worth resuming."""
        if self.staging.exists() and self.latest_checkpoint() is None and self.mode == "fresh":
            shutil.rmtree(self.staging, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        candidates = [
            p for p in self.checkpoints.glob("checkpoint-*")
            if p.is_dir() and (p / "trainer_state.json").exists() and p.name.split("-")[-1].isdigit()
        ]
        return max(candidates, key=lambda p: int(p.name.split("-")[-1])) if candidates else None

    def latest_step(self) -> int | None:
        checkpoint = self.latest_checkpoint()
        return int(checkpoint.name.split("-")[-1]) if checkpoint else None

    def write_recipe(self, recipe_dict: dict[str, Any]) -> None:
        write_text_atomic(self.staging / RECIPE_FILE, yaml.safe_dump(recipe_dict, sort_keys=False))

    def read_staged_recipe(self) -> dict[str, Any] | None:
        file = self.staging / RECIPE_FILE
        return yaml.safe_load(file.read_text()) if file.exists() else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.staging / MANIFEST_FILE, manifest)

    def read_staged_manifest(self) -> dict[str, Any]:
        file = self.staging / MANIFEST_FILE
        return json.loads(file.read_text()) if file.exists() else {}

    def finish(self) -> Path:
        """Rename the finished staging folder into place (replacing an older run only now, if --force)."""
        replace_dir(self.staging, self.path)
        return self.path


# ---------------------------------------------------------------------------------------------------------------
# Reading finished runs


@dataclass
class Run:
    path: Path
    recipe: dict[str, Any]
    manifest: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", self.recipe.get("stage", "?"))

    @property
    def base_model(self) -> str:
        return self.manifest["base_model"]["location"]

    @property
    def method(self) -> str:
        return self.recipe.get("method", "lora")

    @property
    def has_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)


def read_run(path: str | Path, expect_stage: tuple[str, ...] | None = None) -> Run:
    """Open a finished run folder, with errors that say what is wrong with it."""
    path = Path(path)
    staging = path.parent / f".{path.name}.partial"
    if not path.exists():
        if staging.is_dir():
            raise RunError(f"run {path} did not finish (an interrupted run is in {staging.name})",
                           hint="finish it with the same command plus --resume")
        raise RunError(f"run folder {path} not found", hint="check the path")
    manifest_file, recipe_file = path / MANIFEST_FILE, path / RECIPE_FILE
    if not path.is_dir() or not manifest_file.is_file() or not recipe_file.is_file():
        raise RunError(f"{path} is not a lorakit run folder (no {MANIFEST_FILE} / {RECIPE_FILE})",
                       hint="pass a folder written by lorakit sft or lorakit dpo")
    try:
        manifest = json.loads(manifest_file.read_text())
        recipe = yaml.safe_load(recipe_file.read_text()) or {}
    except (json.JSONDecodeError, yaml.YAMLError):
        raise RunError(f"{path}: the run's manifest or recipe is corrupt", hint="re-run that stage") from None
    if manifest.get("status") != "complete":
        raise RunError(f"run {path} is not complete (status: {manifest.get('status')})",
                       hint="finish it with --resume, or re-run it")
    run = Run(path=path, recipe=recipe, manifest=manifest)
    if expect_stage and run.stage not in expect_stage:
        raise RunError(f"{path} is a '{run.stage}' run, expected {' or '.join(expect_stage)}",
                       hint="pass the folder of the matching stage")
    metrics_file = path / METRICS_FILE
    if metrics_file.exists():
        run.metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return run
