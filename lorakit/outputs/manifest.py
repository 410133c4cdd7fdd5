"""manifest.json, typed: one strict pydantic model per kind of output, told apart by `stage`.

As strict as the recipes (lorakit.config): frozen, unknown keys refused, no type coercion ("9" is not 9, true is not
1). Fields a command cannot do without are checked where they are needed (a training run's base model, when a
command loads it), so manifests written by earlier lorakit versions, which lacked later fields, still open.

Writers build the model (`SFTManifest(...)`) and `write_manifest` saves it; readers get it back from `read_manifest`,
with a file that does not parse or a field of the wrong type named as integrity does: "run X is damaged:
manifest.json: WHAT". A new training stage is one small class (`class GRPOManifest(TrainingRunManifest)` with its
`stage`), listed in `MANIFEST_KINDS`.
"""

from __future__ import annotations

import datetime as _dt
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lorakit import __version__
from lorakit.errors import LorakitError, RunError
from lorakit.io import json_type, read_json, write_json_atomic
from lorakit.outputs.integrity import Damaged
from lorakit.outputs.layout import MANIFEST_FILE


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """The versions a manifest records, so a run can be audited and reproduced."""
    versions = {"lorakit": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "gguf"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def __getitem__(self, key: str) -> Any:
        """A field as plain JSON, by name (`run.manifest["distributed"]`): for tests and --json that compare records
        as written. lorakit itself reads the typed fields."""
        if key not in type(self).model_fields:
            raise KeyError(key)
        return self.model_dump()[key]


Number = Union[int, float]


# ---------------------------------------------------------------------------------------------------------------
# Records inside manifests


class GGUFSource(Record):
    """What a run records about a base unpacked from a GGUF file: enough to find or rebuild it later."""

    path: str | None = None
    sha256: str | None = None
    architecture: str | None = None
    file_type: str | None = None
    pre_tokenizer: str | None = None
    quantized: bool | None = None
    dequantized: bool | None = None
    dtype: str | None = None
    note: str | None = None


class BaseModelRecord(Record):
    """The base model an output was trained on or made from (lorakit.model.ModelSource.record())."""

    name: str
    location: str | None = None  # the folder it loaded from, or the hub id
    revision: str | None = None
    gguf: GGUFSource | None = None


class ParentRecord(Record):
    """The run a training run continued from (a DPO run's SFT run)."""

    path: str | None = None
    stage: str | None = None
    finished_at: str | None = None
    dataset: str | None = None  # the parent's dataset fingerprint


class DataQualityRecord(Record):
    """What the data screen found in a training set and dropped (lorakit.data.quality: Screen.record())."""

    dedup: str | None = None  # off | report | exact | near
    dedup_threshold: Number | None = None
    dedup_ngram: int | None = None
    decontaminate: str | None = None  # off | report | drop
    contamination_ngram: int | None = None
    contamination_threshold: Number | None = None
    exact_duplicates: int = 0
    near_duplicates: int = 0
    eval_duplicates: int = 0  # training rows that repeat an eval row
    same_answers: int = 0  # preference pairs whose chosen equals rejected
    contaminated: int = 0  # training rows holding an eval or benchmark row
    dropped: int = 0
    dropped_rows: dict[str, list[int]] = Field(default_factory=dict)  # why -> rows (1-based)
    near_rows_checked: int = 0
    benchmark_rows: int = 0
    against: list[str] = Field(default_factory=list)  # the benchmark files checked
    seconds: Number = 0


class DatasetRecord(Record):
    source: str | None = None
    format: str | None = None
    fingerprint: str | None = None
    rows: int | None = None
    eval_rows: int | None = None
    tokens: int | None = None
    trained_tokens: int | None = None
    truncated: int | None = None
    max_length: int | None = None
    columns: list[str] | None = None  # GRPO: the data's columns besides the prompt (what the rewards may read)
    quality: DataQualityRecord | None = None


class ChatTemplateRecord(Record):
    """Which chat template a run trained with, and why (lorakit.chat_families.TemplateChoice.record())."""

    name: str  # tokenizer | recipe | chatml | gemma | llama3 | ...
    source: str | None = None
    reason: str | None = None
    added_tokens: list[str] = Field(default_factory=list)  # added to the vocabulary for it; their rows were trained


class EvalTurnRecord(Record):
    """Where a held-out metric was lowest, and how far its last evaluation is above it (lorakit.train.keep)."""

    metric: str
    min_step: int
    min: Number
    final_step: int
    final: Number
    rise: Number  # (final - min) / |min|
    evaluations: int


class KeptRecord(Record):
    """Which step's adapter a run holds and why (train.keep: last | best; early stopping)."""

    policy: str  # last | best
    step: int
    last_step: int | None = None
    stopped_early: bool = False
    metric: str | None = None  # what best was judged by
    value: Number | None = None
    why: str | None = None
    eval_turn: EvalTurnRecord | None = None


class DistributedRecord(Record):
    processes: int = 1
    strategy: str | None = None
    global_batch_size: int | None = None


class LongSequencesRecord(Record):
    """What a training run chose for long sequences (lorakit.train.tiling, token_batches, model.choose_kbit_upcast),
    and why each."""

    tiled_mlp: bool = False  # decoder MLPs ran in tiles of tile_tokens
    tile_tokens: int | None = None
    kbit_upcast: bool | None = None  # QLoRA: embeddings, norms and head in fp32; None: no 4-bit base
    micro_batch_tokens: int | None = None  # forward passes of whole examples up to this many tokens; None: by examples
    why: dict[str, str] = Field(default_factory=dict)


class LineageEntry(Record):
    """One run a merged model is made of: the run merged, its parent, and so on."""

    stage: str | None = None
    path: str | None = None
    finished_at: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# One manifest per kind of output


class Manifest(Record):
    stage: str
    status: str | None = None  # running | complete
    versions: dict[str, str] = Field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def written_at(self) -> str | None:
        """When the output was finished (a training run) or written (anything else)."""
        return getattr(self, "finished_at", None) or getattr(self, "created_at", None)


class TrainingRunManifest(Manifest):
    """An adapter run (`lorakit sft`, `lorakit dpo`, `lorakit grpo`): written as training starts, completed when it finishes."""

    started_at: str | None = None
    finished_at: str | None = None
    base_model: BaseModelRecord | None = None
    method: str | None = None
    device: str | None = None
    precision: str | None = None
    optimizer: str | None = None
    speed: dict[str, Any] | None = None
    dataset: DatasetRecord | None = None
    parent: ParentRecord | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    vram_estimate: dict[str, Any] | None = None
    distributed: DistributedRecord | None = None
    warnings: list[str] = Field(default_factory=list)
    summary: dict[str, Any] | None = None
    long_sequences: LongSequencesRecord | None = None  # runs before issue 26: None
    chat_template: ChatTemplateRecord | None = None
    kept: KeptRecord | None = None  # written when the run finishes

    @property
    def processes(self) -> int:
        """How many training processes it ran on (runs from before multi-process training: one)."""
        return self.distributed.processes if self.distributed is not None else 1

    def completed(self, finished_at: str, summary: dict[str, Any], kept: KeptRecord | None = None
                  ) -> "TrainingRunManifest":
        update: dict[str, Any] = {"status": "complete", "finished_at": finished_at, "summary": summary}
        if kept is not None:
            update["kept"] = kept
        return self.model_copy(update=update)


class SFTManifest(TrainingRunManifest):
    stage: Literal["sft"] = "sft"


class DPOManifest(TrainingRunManifest):
    stage: Literal["dpo"] = "dpo"


class GRPOManifest(TrainingRunManifest):
    """A GRPO run (`lorakit grpo`): its rewards are in its recipe, its sampled completions in samples.jsonl."""

    stage: Literal["grpo"] = "grpo"


class MergeManifest(Manifest):
    """A merged model (`lorakit merge`)."""

    stage: Literal["merge"] = "merge"
    created_at: str | None = None
    source: str | None = None  # the run (or bare adapter) merged
    base_model: BaseModelRecord | None = None
    lineage: list[LineageEntry] = Field(default_factory=list)
    method: str | None = None
    mode: str | None = None
    dtype: str | None = None
    shards: int | None = None
    gap: dict[str, Any] | None = None


class TokenizationCheck(Record):
    """The export's tokenizer against the source's on the sample chats."""

    texts: int | None = None
    mismatches: int | None = None
    first_mismatch: str | None = None


class LlamaCppCheck(Record):
    """llama.cpp itself (llama-cpp-python) running a GGUF export: its logits and tokenization against the source."""

    mean_kl: Number | None = None
    top1_agreement: Number | None = None
    max_abs_logit_diff: Number | None = None
    positions: int | None = None
    tokenization: TokenizationCheck | None = None


class Verification(Record):
    """An export compared with its source (lorakit.export.verify, gguf_verify): the top-level figures are those of the
    runtime that judged it (`judged_by`)."""

    mean_kl: Number | None = None
    top1_agreement: Number | None = None
    max_abs_logit_diff: Number | None = None
    positions: int | None = None
    source_perplexity: Number | None = None
    export_perplexity: Number | None = None
    perplexity_delta: Number | None = None
    samples: str | None = None  # where the sample chats came from
    tolerance_kl: Number | None = None
    judged_by: str | None = None  # transformers | llama.cpp (GGUF)
    tokenization: TokenizationCheck | None = None
    llama_cpp: LlamaCppCheck | None = None
    transformers_error: str | None = None  # transformers' GGUF reader failed on the file; llama.cpp judged
    tokenizer_rebuild_error: str | None = None
    tensor_types: dict[str, int] = Field(default_factory=dict)
    tensors: int | None = None
    max_rel_rms_error: Number | None = None
    worst_tensor: str | None = None
    max_rel_rms_error_by_type: dict[str, Number] = Field(default_factory=dict)  # lorakit < 0.2's own GGUF writer


class CalibrationRecord(Record):
    """The rows a GPTQ/AWQ export calibrated on."""

    rows: int | None = None
    tokens: int | None = None
    source: str | None = None
    max_tokens_per_row: int | None = None


class LLMCompressorRecord(Record):
    """The managed llm-compressor environment a calibrated export ran in."""

    environment: str | None = None
    seconds: Number | None = None
    device: str | None = None
    versions: str | None = None


class VLLMRecord(Record):
    command: str | None = None
    min_compute_capability: str | None = None
    gpus: str | None = None


class ConverterRecord(Record):
    package: str | None = None
    version: str | None = None
    sha256: str | None = None


class GGUFExportRecord(Record):
    """How a GGUF export was written: the architecture llama.cpp's converter wrote, which converter, and what
    lorakit's tokenizer part decided (pre-tokenizer, BOS flag, end-of-turn)."""

    architecture: str | None = None
    converter: ConverterRecord | None = None
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    f16_fallbacks: list[str] = Field(default_factory=list)


class ExportManifest(Manifest):
    """A deploy export (`lorakit quantize`): GGUF, compressed-tensors (W4A16/W8A8/FP8) or serialized bitsandbytes."""

    stage: Literal["quantize"] = "quantize"
    created_at: str | None = None
    source: str | None = None  # the merged model exported
    target: str | None = None  # the label: gguf-q8_0, w4a16-rtn, fp8-dynamic, bnb-4bit (lorakit.config.Target)
    format: str | None = None
    type: str | None = None  # GGUF type
    method: str | None = None  # compressed-tensors: rtn, gptq, awq, dynamic
    files: list[str] = Field(default_factory=list)
    sizes: dict[str, Number] = Field(default_factory=dict)
    template_family: str | None = None
    gguf: GGUFExportRecord | None = None
    # compressed-tensors
    scheme: str | None = None  # W4A16, W8A8, FP8_DYNAMIC
    group_size: int | None = None
    dtype: str | None = None  # of what stays unquantized
    quantized_layers: int | None = None
    unquantized: dict[str, str] = Field(default_factory=dict)  # module or parameter -> why it stays 16-bit
    unquantized_vectors: int | None = None
    seconds: Number | None = None
    calibration: CalibrationRecord | None = None
    llmcompressor: LLMCompressorRecord | None = None
    vllm: VLLMRecord | None = None
    verification: Verification | None = None
    verified_runtimes: list[str] = Field(default_factory=list)

    @property
    def gguf_file(self) -> str | None:
        return next((f for f in self.files if f.endswith(".gguf")), None)

    @property
    def calibration_rows(self) -> int | None:
        return self.calibration.rows if self.calibration is not None else None


class BaseCopyManifest(Manifest):
    """A base model copied out of lorakit's cache (`lorakit export-base`)."""

    stage: Literal["base"] = "base"
    created_at: str | None = None
    name: str | None = None
    copied_from: str | None = None
    files: list[str] = Field(default_factory=list)


class GGUFImportManifest(Manifest):
    """A GGUF file unpacked into lorakit's cache as a model folder training can load (lorakit.gguf_source)."""

    stage: Literal["gguf-import"] = "gguf-import"
    kind: Literal["gguf-import"] = "gguf-import"  # how lorakit before typed manifests named it (and still reads it)
    import_version: int | None = None
    path: str | None = None
    sha256: str | None = None
    size: int | None = None
    architecture: str | None = None
    name: str | None = None
    file_type: str | None = None
    tensor_types: dict[str, int] = Field(default_factory=dict)
    parameters: int | None = None
    pre_tokenizer: str | None = None
    quantized: bool | None = None
    dequantized: bool | None = None
    dtype: str | None = None
    tokenizer_fixes: list[str] = Field(default_factory=list)
    note: str | None = None
    created_at: str | None = None


MANIFEST_KINDS: tuple[type[Manifest], ...] = (SFTManifest, DPOManifest, MergeManifest, ExportManifest,
                                               BaseCopyManifest, GGUFImportManifest, GRPOManifest)
STAGES = {kind.model_fields["stage"].default: kind for kind in MANIFEST_KINDS}
TRAINING_STAGES = tuple(stage for stage, kind in STAGES.items() if issubclass(kind, TrainingRunManifest))


def training_manifest(stage: str) -> type[TrainingRunManifest]:
    """The manifest class a training stage writes."""
    kind = STAGES[stage]
    assert issubclass(kind, TrainingRunManifest)
    return kind


AnyManifest = Annotated[Union[MANIFEST_KINDS], Field(discriminator="stage")]  # type: ignore[valid-type]
_ADAPTER: TypeAdapter = TypeAdapter(AnyManifest)


# ---------------------------------------------------------------------------------------------------------------
# Reading and writing


class UnknownStage(RunError):
    """A manifest whose stage is not one lorakit writes (or not a name at all): the folder is not an output this
    command can use, which the command says in its own words."""

    def __init__(self, stage: Any):
        super().__init__(f"manifest stage {stage!r} is not one lorakit writes")
        self.stage = stage


def read_manifest_data(folder: Path, owner: str) -> dict[str, Any] | None:
    """The manifest as JSON (None when there is none); one that does not read as a JSON object is `Damaged`."""
    file = Path(folder) / MANIFEST_FILE
    if not (file.exists() or file.is_symlink()):
        return None
    try:
        return read_json(file, RunError)
    except LorakitError as exc:
        raise Damaged(owner, MANIFEST_FILE, getattr(exc, "what", None) or exc.message) from None


def stage_of(data: dict[str, Any]) -> Any:
    """The manifest's stage; a GGUF import written before manifests had one says so in `kind`."""
    if "stage" not in data and data.get("kind") == "gguf-import":
        return "gguf-import"
    return data.get("stage")


def parse_manifest(data: dict[str, Any], owner: str) -> Manifest | None:
    """The typed manifest (None for an object without a stage: a folder marked as lorakit's by hand). A stage lorakit
    does not write is `UnknownStage`; a field of the wrong type or an unknown field is `Damaged`, named."""
    stage = stage_of(data)
    if stage is None:
        return None
    if not isinstance(stage, str) or stage not in STAGES:
        raise UnknownStage(stage)
    try:
        return _ADAPTER.validate_python({**data, "stage": stage})
    except ValidationError as exc:
        raise Damaged(owner, MANIFEST_FILE, describe_problem(exc, data)) from None


def read_manifest(folder: str | Path, owner: str | None = None) -> Manifest | None:
    """The typed manifest of `folder` (None when it has none, or one without a stage); `Damaged` or `UnknownStage`
    otherwise."""
    folder = Path(folder)
    owner = owner or f"output {folder}"
    data = read_manifest_data(folder, owner)
    return None if data is None else parse_manifest(data, owner)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Save a manifest with the fields its writer set (so a manifest reads the same as before typing), its stage
    always first."""
    write_json_atomic(Path(folder) / MANIFEST_FILE, {"stage": manifest.stage, **manifest.model_dump(exclude_unset=True)})


EXPECTED = {"dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
            "string_type": "a string", "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
            "list_type": "a list", "literal_error": None}


def describe_problem(exc: ValidationError, data: dict[str, Any]) -> str:
    """The first problem of a manifest, in words: 'summary is not an object (it is a list)'."""
    errors = exc.errors()
    stage = stage_of(data)
    first = errors[0]
    path, value = _data_path(first["loc"], data, stage)
    where = ".".join(str(part) for part in path) or "the manifest"
    kinds = {e["type"] for e in errors if _data_path(e["loc"], data, stage)[0] == path}
    if first["type"] == "missing":
        return f"{where} is missing"
    if first["type"] == "extra_forbidden":
        return f"{where} is not a field of a {stage} manifest"
    if {"int_type", "float_type"} <= kinds:
        return f"{where} is not a number (it is {json_type(value)})"
    expected = EXPECTED.get(first["type"])
    if expected:
        return f"{where} is not {expected} (it is {json_type(value)})"
    return f"{where}: {first['msg']}"


def _data_path(loc: tuple, data: dict[str, Any], stage: Any) -> tuple[list, Any]:
    """The part of a pydantic error location that indexes into the data (pydantic adds the discriminator's value in
    front and the names of union members along the way), and the value found there."""
    parts = list(loc[1:] if loc and loc[0] == stage else loc)
    path: list = []
    value: Any = data
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            if isinstance(value, dict) and isinstance(part, str) and part.isidentifier() and part not in MEMBER_TAGS \
                    and not part[:1].isupper():
                path.append(part)  # a field that is missing
                value = None
            break
        path.append(part)
    return path, value


MEMBER_TAGS = ("int", "float", "str", "bool", "list", "dict")


def manifest_json(folder: str | Path) -> dict[str, Any]:
    """The manifest as written, as plain JSON ({} when there is none or it does not read): for `--json` output and
    tests that compare records. Commands read the typed manifest (`read_manifest`)."""
    try:
        return read_json(Path(folder) / MANIFEST_FILE, RunError)
    except LorakitError:
        return {}
