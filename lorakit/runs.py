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
import glob
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from lorakit.config import TRAINING_STAGES
from lorakit.errors import LorakitError, ModelError, RunError
from lorakit.safe_io import parse_json, read_json, read_text

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


def check_output_path(target: str | Path, what: str = "output") -> Path:
    """Refuse an output path that names no folder of its own ('', '.', '..', '/') or one the user works in: replacing
    it would first rename the current folder, the home folder or the whole disk out of the way."""
    raw = str(target)
    target = Path(target)
    if not raw.strip() or target.name in ("", ".", ".."):
        raise RunError(f"{what} path {raw!r} names no folder of its own",
                       hint="give a new folder's name, e.g. --output-dir out/run")
    try:
        resolved, cwd = target.resolve(), Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic link loop in the path (RuntimeError before Python 3.13)
        raise RunError(f"{what} path {raw!r} cannot be resolved: {getattr(exc, 'strerror', None) or exc}",
                       hint="choose another output path") from None
    if resolved == cwd or resolved in cwd.parents:
        raise RunError(f"{what} {raw!r} is the current folder or one that holds it", hint="choose a new folder below it")
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise RunError(f"{what} {raw!r} is the home folder or the root of the disk", hint="choose a new folder below it")
    return target


def _refuse_unsafe(path: Path) -> None:
    """Last guard before a rename or delete: never the current folder, an ancestor of it, home or /."""
    check_output_path(path, "folder")


def check_can_write(target: Path, force: bool, what: str = "output", inputs: Iterable[str | Path] = (),
                    ours_only: bool = True) -> None:
    """Refuse an output that would lose work: an existing one without --force; whatever --force says, one that is or
    holds an input of the command, or (with `ours_only`) a folder lorakit did not write, such as `out/` itself."""
    target = check_output_path(target, what)
    if target.is_symlink() and not target.exists():
        raise RunError(f"{what} {target} is a broken symbolic link or a link loop", hint="choose another output path")
    if target.exists() and not target.is_dir():
        raise RunError(f"{what} {target} exists and is a file", hint="choose another output path")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise RunError(f"{what} {target} cannot be created: {ancestor} is a broken symbolic link or a link loop",
                           hint="choose another output path")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"{what} {target} cannot be created: {ancestor} is a file", hint="choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunError(f"{what} {target} cannot be created: {ancestor} is not writable",
                       hint="check its permissions, or choose another output path")
    try:  # permissions do not tell everything (/sys, /proc, read-only mounts): try, before anything loads
        os.rmdir(tempfile.mkdtemp(prefix=".lorakit-probe-", dir=ancestor))
    except OSError as exc:
        raise RunError(f"{what} {target} cannot be created in {ancestor}: {exc.strerror or exc}",
                       hint="choose an output path on a writable disk") from None
    check_inputs(target, inputs, what)
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
    """Move a finished staging folder onto `target`, replacing what was there only once the new one is whole.

    Two renames (target aside, staging in): a process killed between them leaves no `target`, the old copy in a
    hidden `.NAME.old-*` and the new one still staged, so nothing half-written ever sits at `target`. Once the new
    one is in place, old copies (this one, or one a killed replacement left behind) are removed."""
    _refuse_unsafe(target)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
    os.replace(staging, target)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _lock(folder: Path) -> int | None:
    """Hold an exclusive lock on a staging folder while it is written (released by the kernel if the process dies,
    so a staging folder nobody holds is one a killed command left behind)."""
    try:
        import fcntl
    except ImportError:  # not on Linux/macOS: abandoned staging folders are simply not collected
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def remove_abandoned_staging(target: Path) -> None:
    """Delete `.NAME.tmp-*` folders that a killed merge, export or cache write left beside `target` (a 7B merge is
    15 GB of dead weight): only those no live process holds locked."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        fd = _lock(stale) if stale.is_dir() and not stale.is_symlink() else None
        if fd is not None:
            try:
                shutil.rmtree(stale, ignore_errors=True)
            finally:
                _unlock(fd)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False, what: str = "output",
               inputs: Iterable[str | Path] = (), ours_only: bool = True) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes `target`, on any error it is removed (and if the process is
    killed, the next atomic_dir for the same target removes it)."""
    target = Path(target)
    check_can_write(target, force, what, inputs, ours_only)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(staging, 0o755)
    except OSError as exc:
        raise RunError(f"{what} {target} cannot be created: {exc.strerror or exc}",
                       hint="choose an output path on a writable disk") from None
    lock = _lock(staging)
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _unlock(lock)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def check_inputs(target: Path, inputs: Iterable[str | Path], what: str = "output") -> None:
    """Whatever --force says, an output must not be or hold a file or folder the command reads."""
    resolved = Path(target).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            raise RunError(f"{what} {target} would replace {source}, which this command reads",
                           hint="choose another --output-dir")


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

    def check_resumable_files(self) -> None:
        """Everything a resume reads from the staging folder, read once now: a damaged file is named here."""
        from lorakit.console import info
        from lorakit.integrity import check_checkpoint

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
        _refuse_unsafe(self.path)
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
                _refuse_unsafe(self.staging)
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
        from lorakit.compat import checkpoint_rng_files
        from lorakit.integrity import checkpoint_is_complete

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
        from lorakit.config import recipe_to_yaml

        write_text_atomic(self.staging / RECIPE_FILE, recipe_to_yaml(recipe))

    def read_staged_recipe(self) -> dict[str, Any] | None:
        """The interrupted run's recipe as saved (a dict: it is compared section by section with the new one)."""
        from lorakit.config import parse_yaml

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

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.staging / MANIFEST_FILE, manifest)

    def read_staged_manifest(self) -> dict[str, Any]:
        file = self.staging / MANIFEST_FILE
        if not (file.exists() or file.is_symlink()):
            return {}
        try:
            return read_json(file, RunError)
        except LorakitError as exc:
            raise damaged(self.owner, self._staged(MANIFEST_FILE), exc) from None

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
    """'OWNER is damaged: FILE: WHAT' (lorakit.integrity.Damaged), from a read error or a description."""
    from lorakit.integrity import Damaged

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
        return read_json(file, RunError)
    except LorakitError:
        return {}


def check_manifest(manifest: dict[str, Any], owner: str) -> None:
    """The fields later commands read from a training run's manifest are there, with the right types."""
    base = manifest.get("base_model")
    if not isinstance(base, dict) or not all(isinstance(base.get(k), str) and base.get(k) for k in ("name", "location")):
        raise damaged(owner, MANIFEST_FILE, "base_model has no name and location")
    parent = manifest.get("parent")
    if parent is not None and not (isinstance(parent, dict) and isinstance(parent.get("path"), (str, type(None)))):
        raise damaged(owner, MANIFEST_FILE, "parent is not a record of the parent run")
    for key in ("dataset", "summary", "speed"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise damaged(owner, MANIFEST_FILE, f"{key} is not an object")


def read_run(path: str | Path, expect_stage: tuple[str, ...] | None = None) -> Run:
    """Open a finished run folder, with errors that say what is wrong with it: a file cut short, overwritten or
    edited into something else is 'run X is damaged: FILE: WHAT' (lorakit.integrity), never a library's traceback."""
    from lorakit.config import load_recipe
    from lorakit.integrity import check_run_files

    path = Path(path)
    staging = staging_path(path)
    owner = f"run {path}"
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
        raise damaged(owner, MANIFEST_FILE, "missing")
    try:
        manifest = read_json(manifest_file, RunError)
    except LorakitError as exc:
        raise damaged(owner, MANIFEST_FILE, exc) from None
    if manifest.get("status") != "complete":
        raise RunError(f"run {path} is not complete (status: {manifest.get('status')!r})",
                       hint="finish it with --resume, or re-run it")
    stage = manifest.get("stage")
    if stage not in TRAINING_STAGES:
        raise RunError(f"{path} is a '{stage}' folder, not a training run",
                       hint="pass the folder of an sft, dpo or grpo run")
    if recipe_file not in present:
        raise damaged(owner, RECIPE_FILE, "missing")
    check_manifest(manifest, owner)
    try:
        recipe = load_recipe(stage, recipe_file)
    except LorakitError as exc:
        what = getattr(exc, "what", None) or exc.message.removeprefix(f"{recipe_file}: ")
        raise damaged(owner, RECIPE_FILE, f"not a valid {stage} recipe ({what})") from None
    run = Run(path=path, recipe=recipe, manifest=manifest)
    if expect_stage and run.stage not in expect_stage:
        raise RunError(f"{path} is a '{run.stage}' run, expected {' or '.join(expect_stage)}",
                       hint="pass the folder of the matching stage")
    check_run_files(path, owner)
    run.metrics = read_metrics(path / METRICS_FILE, owner)
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
    if override is not None and not override.strip():
        raise ModelError("--model is empty", hint="give the base model's hub id or folder, or leave --model out")
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
