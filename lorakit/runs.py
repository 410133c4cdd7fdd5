"""Outputs lorakit writes and reads back: run folders, merged models, exports. The one place that knows their layout.

Every output (a training run, a merged model, an export, the tiny model, a cache entry) is built in a hidden staging
folder beside its target and renamed into place at the end, so an interrupted command never leaves a half-written
output that a later command could mistake for a finished one.

A training run works in `.NAME.partial` (resolved recipe, manifest, metrics.jsonl and checkpoints land there as
training goes). Only when training has finished and the adapter, tokenizer and model card are written is it renamed
to NAME. An interrupted run stays `.partial` and `--resume` continues it; without `--resume` or `--force` lorakit
refuses to touch it, and a finished run is never overwritten without `--force`.

Reading goes through here too: `read_run` gives a `Run` whose recipe is the validated `SFTRecipe | DPORecipe` (never a
dict), and `read_manifest` / `training_run_behind` follow the lineage of merged models and exports.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from lorakit.errors import LorakitError, ModelError, RunError

if TYPE_CHECKING:
    from lorakit.config import DPORecipe, SFTRecipe
    from lorakit.model import ModelSource

RECIPE_FILE = "lorakit.yaml"
# Every output lorakit writes (runs, merged models, exports) carries one; a folder without it is not ours to replace.
MANIFEST_FILE = "manifest.json"
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


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


def staging_path(path: str | Path) -> Path:
    """Where an unfinished training run for `path` lives until it is complete."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def merged_folder(run: str | Path) -> Path:
    """Where `lorakit merge RUN` writes by default, and where quantize looks for a run's merge."""
    run = Path(run)
    return run.parent / f"{run.name}-merged"


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_can_write(target: Path, force: bool, what: str = "output", inputs: Iterable[str | Path] = (),
                    ours_only: bool = True) -> None:
    """Refuse an output that would lose work: an existing one without --force; whatever --force says, one that is or
    holds an input of the command, or (with `ours_only`) a folder lorakit did not write, such as `out/` itself."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise RunError(f"{what} {target} exists and is a file", hint="choose another output path")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{what} {target} cannot be created: {ancestor} is a file", hint="choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"{what} {target} cannot be created: {ancestor} is not writable",
                       hint="check its permissions, or choose another output path")
    resolved = target.resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            raise RunError(f"{what} {target} would replace {source}, which this command reads",
                           hint="choose another --output-dir")
    if not is_nonempty_dir(target):
        return
    if not force:
        raise RunError(
            f"{what} {target} already exists and is not empty",
            hint="pass --force to overwrite it, or choose another --output-dir",
        )
    if ours_only and not (target / MANIFEST_FILE).is_file():
        raise RunError(f"{what} {target} holds files lorakit did not write (no {MANIFEST_FILE}), so --force "
                       "will not replace it", hint="choose another --output-dir")


def replace_dir(staging: Path, target: Path) -> None:
    """Move a finished staging folder onto `target`, replacing what was there only once the new one is whole."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False, what: str = "output",
               inputs: Iterable[str | Path] = (), ours_only: bool = True) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes `target`, on any error it is removed."""
    target = Path(target)
    check_can_write(target, force, what, inputs, ours_only)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, 0o755)
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# A run being written


@dataclass
class RunFolder:
    """A run being written. `path` is where the finished run will live."""

    path: Path
    mode: str = "fresh"  # fresh | resume

    @property
    def staging(self) -> Path:
        return staging_path(self.path)

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

    def latest_checkpoint(self, processes: int = 1) -> Path | None:
        """The newest complete checkpoint: the trainer writes trainer_state.json last, and each of `processes`
        training processes its own RNG state (a process killed while saving leaves its file missing)."""
        from lorakit.compat import checkpoint_rng_files

        if not self.checkpoints.is_dir():
            return None
        rng_files = checkpoint_rng_files(processes) if processes > 1 else ()
        candidates = [
            p for p in self.checkpoints.glob("checkpoint-*")
            if p.is_dir() and (p / "trainer_state.json").exists() and p.name.split("-")[-1].isdigit()
            and all((p / name).is_file() for name in rng_files)
        ]
        return max(candidates, key=lambda p: int(p.name.split("-")[-1])) if candidates else None

    def latest_step(self) -> int | None:
        checkpoint = self.latest_checkpoint()
        return int(checkpoint.name.split("-")[-1]) if checkpoint else None

    def write_recipe(self, recipe) -> None:
        from lorakit.config import recipe_to_yaml

        write_text_atomic(self.staging / RECIPE_FILE, recipe_to_yaml(recipe))

    def read_staged_recipe(self) -> dict[str, Any] | None:
        """The interrupted run's recipe as saved (a dict: it is compared section by section with the new one)."""
        import yaml

        file = self.staging / RECIPE_FILE
        return yaml.safe_load(file.read_text()) if file.exists() else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.staging / MANIFEST_FILE, manifest)

    def read_staged_manifest(self) -> dict[str, Any]:
        file = self.staging / MANIFEST_FILE
        return json.loads(file.read_text()) if file.exists() else {}

    @property
    def metrics_file(self) -> Path:
        return self.staging / METRICS_FILE

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_file)

    def trim_metrics(self, step: int) -> None:
        """On resume, drop log lines from after the checkpoint: those steps are trained again."""
        if not self.metrics_file.exists():
            return
        kept = [json.dumps(r) for r in self.read_metrics() if r.get("step", 0) <= step]
        write_text_atomic(self.metrics_file, "".join(line + "\n" for line in kept))

    def finish(self) -> Path:
        """Rename the finished staging folder into place (replacing an older run only now, if --force)."""
        replace_dir(self.staging, self.path)
        return self.path


def read_metrics(file: Path) -> list[dict[str, Any]]:
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# Reading finished outputs


@dataclass
class Run:
    """A finished training run: its validated recipe, its manifest and its metrics."""

    path: Path
    recipe: "SFTRecipe | DPORecipe"
    manifest: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", self.recipe.stage)

    @property
    def base_model(self) -> str:
        return self.manifest["base_model"]["location"]

    @property
    def method(self) -> str:
        return self.recipe.method

    @property
    def has_adapter(self) -> bool:
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    @property
    def parent_path(self) -> Path | None:
        parent = self.manifest.get("parent") or {}
        return Path(parent["path"]) if parent.get("path") else None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of any output lorakit wrote ({} when there is none or it is unreadable)."""
    file = Path(folder) / MANIFEST_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run(path: str | Path, expect_stage: tuple[str, ...] | None = None) -> Run:
    """Open a finished run folder, with errors that say what is wrong with it."""
    from lorakit.config import load_recipe

    path = Path(path)
    staging = staging_path(path)
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
    except ValueError:
        raise RunError(f"{path}: the run's manifest or recipe is corrupt", hint="re-run that stage") from None
    if manifest.get("status") != "complete":
        raise RunError(f"run {path} is not complete (status: {manifest.get('status')})",
                       hint="finish it with --resume, or re-run it")
    stage = manifest.get("stage")
    if stage not in ("sft", "dpo"):
        raise RunError(f"{path} is a '{stage}' folder, not a training run", hint="pass the folder of an sft or dpo run")
    try:
        recipe = load_recipe(stage, recipe_file)
    except LorakitError:
        raise RunError(f"{path}: the run's manifest or recipe is corrupt", hint="re-run that stage") from None
    run = Run(path=path, recipe=recipe, manifest=manifest)
    if expect_stage and run.stage not in expect_stage:
        raise RunError(f"{path} is a '{run.stage}' run, expected {' or '.join(expect_stage)}",
                       hint="pass the folder of the matching stage")
    run.metrics = read_metrics(path / METRICS_FILE)
    return run


def training_run_behind(folder: str | Path, depth: int = 4) -> Run | None:
    """The training run at the root of a folder's lineage: itself, or the run it was merged/exported from."""
    folder = Path(folder)
    for _ in range(depth):
        if (folder / RECIPE_FILE).is_file():
            try:
                return read_run(folder)
            except RunError:
                return None
        source = read_manifest(folder).get("source")
        if not source:
            return None
        folder = Path(source)
    return None


def lineage_of(run: Run) -> list[dict[str, Any]]:
    """The chain of runs: this one, its parent, and so on down to the first stage."""
    chain = [{"stage": run.stage, "path": str(run.path.resolve()), "finished_at": run.manifest.get("finished_at")}]
    parent = run.manifest.get("parent")
    while parent and len(chain) < 8:
        chain.append({k: parent.get(k) for k in ("stage", "path", "finished_at")})
        try:
            parent = read_run(parent["path"]).manifest.get("parent")
        except RunError:
            break
    return chain


def base_source_of(run: Run, override: str | None = None) -> "ModelSource":
    """The base model a run was trained on; re-resolved if its recorded folder moved (built-ins are rebuilt)."""
    from lorakit.model import ModelSource, check_model_folder, resolve_model_source

    trust = run.recipe.model.trust_remote_code
    if override:
        return resolve_model_source(override, None, trust)
    base = run.manifest["base_model"]
    if base.get("gguf"):
        return gguf_base_source(run, base)
    if Path(base["location"]).is_dir():
        check_model_folder(Path(base["location"]), trust)
        return ModelSource(base["name"], base["location"], True, base.get("revision"))
    name = base["name"]
    if name.startswith("builtin:") or Path(name).exists() or ("/" in name and not name.startswith((".", "/"))):
        return resolve_model_source(name, base.get("revision"), trust)
    raise ModelError(f"the base model of {run.path} ({base['location']}) is gone",
                     hint="pass --model with the base model's folder or hub id")


def gguf_base_source(run: Run, base: dict[str, Any]) -> "ModelSource":
    """A base unpacked from a GGUF file: its cached folder, or the same file unpacked again (checked by its hash)."""
    from lorakit.gguf_source import read_import_manifest
    from lorakit.model import ModelSource, resolve_model_source

    record = base["gguf"]
    cached = read_import_manifest(base["location"])
    if cached is not None and cached.get("sha256") == record.get("sha256"):
        return ModelSource(base["name"], base["location"], True, gguf=record)
    for candidate in dict.fromkeys((record.get("path"), base["name"])):
        if candidate and Path(candidate).expanduser().is_file():
            source = resolve_model_source(str(candidate))
            if source.gguf and source.gguf.get("sha256") == record.get("sha256"):
                return ModelSource(base["name"], source.location, True, gguf=source.gguf)
            raise ModelError(f"the base of {run.path} was unpacked from {candidate}, which has changed since "
                             f"(SHA-256 {str(source.gguf and source.gguf.get('sha256'))[:12]}, trained on "
                             f"{str(record.get('sha256'))[:12]})",
                             hint="put the original GGUF file back, or pass --model with it")
    raise ModelError(f"the base of {run.path} was unpacked from {record.get('path')}, and neither that file nor "
                     f"its unpacked copy ({base['location']}) is there any more",
                     hint="pass --model with the same GGUF file (checked by its SHA-256)")
