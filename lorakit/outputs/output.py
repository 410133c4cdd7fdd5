"""What a folder (or file) given to a command is: one rule for every command that reads outputs.

`open_output(path)` reads the manifest once (typed: lorakit.outputs.manifest) and says what the path is: a training
run, a merged model, an export, a copied base, a GGUF import, a plain model folder, a GGUF file of someone else's.
It knows the output's parent (the run a run continued from, the run a merge was made from, the merged model an
export was made from) and walks the whole lineage down to the base. A manifest that does not read is named as
integrity names it ("run X is damaged: manifest.json: WHAT"), and an output another command is still writing is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorakit.errors import LorakitError, RunError
from lorakit.outputs.layout import ADAPTER_FILES, MANIFEST_FILE, RECIPE_FILE
from lorakit.outputs.lock import check_not_being_written
from lorakit.outputs.manifest import (
    TRAINING_STAGES,
    BaseCopyManifest,
    ExportManifest,
    GGUFImportManifest,
    LineageEntry,
    Manifest,
    MergeManifest,
    TrainingRunManifest,
    UnknownStage,
    parse_manifest,
    read_manifest_data,
)
from lorakit.outputs.runs import Run, read_run

KIND_OF = {MergeManifest: "merged", ExportManifest: "export", BaseCopyManifest: "base",
           GGUFImportManifest: "gguf-import"}
LINEAGE_DEPTH = 8  # sft -> dpo -> (grpo) -> merge -> export is five; a loop of edited manifests stops here


@dataclass(frozen=True)
class Output:
    """One output as lorakit reads it back.

    kind: sft | dpo (training runs) | merged | export | base | gguf-import | model (a plain transformers folder) |
    gguf-file (a GGUF file lorakit did not write) | unknown.
    """

    path: Path  # the folder (for a GGUF file given by itself: the file)
    kind: str
    manifest: Manifest | None = None
    stage: object = None  # the manifest's stage as written (for messages about a stage lorakit does not know)
    gguf: Path | None = None  # the GGUF file of an export or of a GGUF path
    looks_like_run: bool = False  # a recipe or adapter files: a training run, whole or damaged
    has_recipe: bool = False  # lorakit.yaml: a training run, whatever its manifest says
    marked: bool = False  # a manifest.json, whatever it holds: a folder lorakit wrote

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path.is_file() else self.path

    @property
    def is_training_run(self) -> bool:
        return self.kind in TRAINING_STAGES

    @property
    def owner(self) -> str:
        """How errors name this output."""
        return f"{'run' if self.is_training_run or self.looks_like_run else 'output'} {self.folder}"

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.manifest.complete

    @property
    def parent(self) -> Path | None:
        """The folder this output was made from: a run's parent run, a merge's run, an export's merged model."""
        manifest = self.manifest
        if isinstance(manifest, TrainingRunManifest):
            return Path(manifest.parent.path) if manifest.parent is not None and manifest.parent.path else None
        if isinstance(manifest, MergeManifest):
            source = manifest.source or (manifest.lineage[0].path if manifest.lineage else None)
            return Path(source) if source else None
        if isinstance(manifest, ExportManifest):
            return Path(manifest.source) if manifest.source else None
        return None

    @property
    def base_name(self) -> str | None:
        base = getattr(self.manifest, "base_model", None)
        return base.name if base is not None else None

    def parent_folder(self) -> Path | None:
        """Where the parent is now: as recorded, or beside this output when the two moved together (a pipeline's
        root copied elsewhere)."""
        parent = self.parent
        if parent is None:
            return None
        if not parent.exists() and (self.folder.parent / parent.name).is_dir():
            return self.folder.parent / parent.name
        return parent

    def lineage(self, strict: bool = False) -> "Lineage":
        """This output, its parent, and so on down to the first stage. A parent that is gone, or is no output of
        lorakit's, ends the chain (`Lineage.missing`); one that cannot be read ends it too, unless `strict`."""
        chain, seen = [self], {str(self.folder.resolve())}
        while len(chain) < LINEAGE_DEPTH:
            parent = chain[-1].parent_folder()
            if parent is None or str(parent.resolve()) in seen:
                break
            seen.add(str(parent.resolve()))
            try:
                opened = open_output(parent) if (parent / MANIFEST_FILE).is_file() else None
            except LorakitError:
                if strict:
                    raise
                opened = None
            if opened is None or opened.manifest is None:
                return Lineage(chain, str(chain[-1].parent))
            chain.append(opened)
        return Lineage(chain)

    def training_run(self) -> Run | None:
        """The training run at the root of this output: itself, or the run it was merged and exported from (None
        when that run is gone or cannot be read)."""
        for output in self.lineage().outputs:
            if output.is_training_run or output.looks_like_run:
                try:
                    return read_run(output.folder)
                except RunError:
                    return None
        return None


@dataclass(frozen=True)
class Lineage:
    """An output's chain, newest first; `missing`: the recorded parent of the last one, when it could not be read."""

    outputs: list[Output] = field(default_factory=list)
    missing: str | None = None

    def training_record(self) -> list[LineageEntry]:
        """The chain of training runs as a merge records it: the run merged, its parent, and so on (each parent as
        its child recorded it, so a parent that is gone still appears once)."""
        first = self.outputs[0]
        manifest = first.manifest
        assert isinstance(manifest, TrainingRunManifest)
        chain = [LineageEntry(stage=manifest.stage, path=str(first.folder.resolve()),
                              finished_at=manifest.finished_at)]
        for child, parent in zip(self.outputs, [*self.outputs[1:], None]):
            record = child.manifest.parent if isinstance(child.manifest, TrainingRunManifest) else None
            if record is None:
                break
            chain.append(LineageEntry(stage=record.stage, path=record.path, finished_at=record.finished_at))
            if parent is None or not parent.is_training_run:
                break
        return chain


def _gguf_in(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.gguf"))
    return files[0] if files else None


def open_output(path: str | Path) -> Output:
    """What `path` is (see `Output`). Refuses an output another command is writing; a manifest that does not read,
    or holds a field of the wrong type, is `Damaged`. Nothing else is checked here: each command checks the files it
    reads (lorakit.outputs.integrity)."""
    path = Path(path)
    check_not_being_written(path)
    if path.is_file() and path.suffix == ".gguf":
        folder = path.parent
        opened = open_output(folder) if (folder / MANIFEST_FILE).exists() else None
        if opened is not None and opened.kind == "export":
            return Output(folder, "export", opened.manifest, opened.stage, gguf=path)
        return Output(path, "gguf-file", gguf=path)
    if not path.is_dir():
        return Output(path, "unknown")
    has_recipe = (path / RECIPE_FILE).exists() or (path / RECIPE_FILE).is_symlink()
    looks_like_run = has_recipe or any((path / name).exists() or (path / name).is_symlink() for name in ADAPTER_FILES)
    marked = (path / MANIFEST_FILE).exists() or (path / MANIFEST_FILE).is_symlink()
    facts = dict(looks_like_run=looks_like_run, has_recipe=has_recipe, marked=marked)
    owner = f"{'run' if looks_like_run else 'output'} {path}"
    data = read_manifest_data(path, owner)
    try:
        manifest = parse_manifest(data, owner) if data is not None else None
    except UnknownStage as exc:
        return Output(path, "unknown", None, exc.stage, **facts)
    if manifest is not None:
        kind = manifest.stage if isinstance(manifest, TrainingRunManifest) else KIND_OF[type(manifest)]
        gguf = None
        if isinstance(manifest, ExportManifest) and manifest.gguf_file:
            gguf = path / manifest.gguf_file
        return Output(path, kind, manifest, manifest.stage, gguf=gguf, **facts)
    gguf = _gguf_in(path)  # a GGUF file of someone else's (eval scores it)
    if (path / "config.json").is_file() and not looks_like_run:
        return Output(path, "model", gguf=gguf, **facts)
    if gguf is not None and not looks_like_run:
        return Output(path, "gguf-file", gguf=gguf, **facts)
    return Output(path, "unknown", **facts)


def training_run_behind(folder: str | Path) -> Run | None:
    """The training run at the root of a folder's lineage: itself, or the run it was merged/exported from."""
    try:
        return open_output(folder).training_run()
    except LorakitError:
        return None
