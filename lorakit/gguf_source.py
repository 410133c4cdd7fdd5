"""A GGUF file as a base model: the model a user already runs in llama.cpp, Ollama or LM Studio, fine-tuned.

transformers reads GGUF files (`from_pretrained(dir, gguf_file=...)`), dequantizing every tensor. lorakit does that
once per file and keeps the result as an ordinary model folder in its cache, keyed by the file's SHA-256, so every
later command (training, merge, eval, quantize) loads a normal safetensors folder. The folder's manifest.json says
what it holds: the source file and its hash, the GGUF's architecture and types, and that it was dequantized.

A quantized GGUF (Q4_1, Q8_0, K-quants...) keeps only an approximation of the released weights: the dequantized
model is what training starts from, not the original full-precision release, and lorakit says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorakit.cache import cache_dir
from lorakit.compat import (
    drop_gguf_quantizer,
    gguf_dequantizable_types,
    gguf_loadable_architectures,
    route_gguf_loading_bar,
)
from lorakit.console import err
from lorakit.console import info as say
from lorakit.errors import LorakitError, ModelError, ResourceError
from lorakit.io import atomic_dir, write_json_atomic
from lorakit.outputs.manifest import (
    GGUFImportManifest,
    GGUFSource,
    now,
    package_versions,
    read_manifest,
    write_manifest,
)

GGUF_MAGIC = b"GGUF"
IMPORT_KIND = "gguf-import"
IMPORT_VERSION = 2  # bumped when the unpacking changes, so older cached folders are rebuilt
UNQUANTIZED = ("F32", "F16", "BF16")
# transformers can read these GGUF architectures, but not as a causal language model lorakit could fine-tune.
NOT_CAUSAL_LM = ("t5", "t5encoder", "umt5", "bert", "nomic-bert", "clip")


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file holds, read from its metadata (no tensor is read)."""

    path: str
    sha256: str
    size: int
    architecture: str
    name: str | None
    file_type: str  # llama.cpp's general.file_type, e.g. MOSTLY_Q4_1
    tensor_types: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    pre_tokenizer: str | None = None  # tokenizer.ggml.pre, kept so an export can name the same one

    @property
    def quantized(self) -> bool:
        return any(kind not in UNQUANTIZED for kind in self.tensor_types)

    @property
    def dtype(self) -> str:
        """The dtype the weights are kept in: exact for every GGUF type (a block's scale times its integers)."""
        kinds = set(self.tensor_types) - {"F32"}
        if kinds == {"F16"}:
            return "float16"
        if kinds == {"BF16"}:
            return "bfloat16"
        return "float32"

    def describe(self) -> str:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        return f"{self.architecture} {self.file_type.removeprefix('MOSTLY_')} ({kinds})"


def is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == GGUF_MAGIC


def file_sha256(path: Path) -> str:
    """The file's SHA-256, memoized by (path, size, mtime) so a multi-GB file is hashed once, not every run."""
    stat = path.stat()
    memo_file = cache_dir() / "models" / "gguf-hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    memo_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(memo_file, memo)
    return memo[key]


def _field(reader, key: str):
    item = reader.fields.get(key)
    if item is None:
        return None
    value = item.contents()
    return value


def read_gguf_info(path: Path) -> GGUFInfo:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # a truncated or foreign file: gguf raises ValueError/struct errors of many kinds
        raise ModelError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {str(exc)[:80]})",
                         hint="re-download it; lorakit reads GGUF v2/v3 files") from None
    if (_field(reader, "split.count") or 1) > 1:
        raise ModelError(f"{path} is one part of a split GGUF ({_field(reader, 'split.count')} files)",
                         hint="merge the parts first: llama-gguf-split --merge first-part.gguf whole.gguf")
    counts: dict[str, int] = {}
    parameters = 0
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        parameters += int(tensor.n_elements)
    file_type = _field(reader, "general.file_type")
    try:
        file_type_name = gguf.LlamaFileType(file_type).name if file_type is not None else "unknown"
    except ValueError:
        file_type_name = f"type {file_type}"
    return GGUFInfo(str(path.resolve()), file_sha256(path), path.stat().st_size,
                    str(_field(reader, "general.architecture")), _field(reader, "general.name"), file_type_name,
                    counts, parameters, _field(reader, "tokenizer.ggml.pre"))


def check_gguf(info: GGUFInfo) -> None:
    """Refuse, before dequantizing anything, a file transformers cannot turn into a trainable model."""
    from importlib.metadata import version

    name = Path(info.path).name
    loadable = [arch for arch in gguf_loadable_architectures() if arch not in NOT_CAUSAL_LM]
    arch = info.architecture
    if arch not in loadable and arch.replace("-", "_") not in loadable:
        raise ModelError(f"{name}: GGUF architecture {arch!r} cannot be loaded by transformers "
                         f"{version('transformers')} as a causal LM",
                         hint=f"use the model's safetensors release, or a GGUF of: {', '.join(sorted(loadable))}")
    readable = set(UNQUANTIZED) | gguf_dequantizable_types()
    unreadable = sorted(kind for kind in info.tensor_types if kind not in readable)
    if unreadable:
        raise ModelError(f"{name}: tensor type {unreadable[0]} ({info.tensor_types[unreadable[0]]} tensors) cannot "
                         f"be dequantized by gguf {version('gguf')}",
                         hint="use a GGUF of another type (Q8_0, Q4_K_M, F16...) or the safetensors release")


def import_folder(info: GGUFInfo) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(info.path).stem)[:60]
    return cache_dir() / "models" / f"gguf-{slug}-{info.sha256[:12]}"


def read_import_manifest(folder: str | Path) -> GGUFImportManifest | None:
    """The manifest of a cached GGUF import (None for any other folder, or one whose manifest does not read: the
    import is then built again)."""
    try:
        manifest = read_manifest(folder)
    except LorakitError:
        return None
    return manifest if isinstance(manifest, GGUFImportManifest) else None


def dequantized_note(info: GGUFInfo) -> str:
    if not info.quantized:
        return f"{Path(info.path).name} holds {info.dtype} weights: lorakit trains on them as they are"
    return (f"{Path(info.path).name} is quantized ({info.file_type.removeprefix('MOSTLY_')}): lorakit trains on "
            f"its dequantized weights ({info.dtype}), not on the original full-precision release")


def import_gguf(path: Path) -> tuple[Path, GGUFInfo]:
    """The cached model folder of a GGUF file, built on first use (atomically: an interrupted import leaves none)."""
    gguf_info = read_gguf_info(path)
    folder = import_folder(gguf_info)
    recorded = read_import_manifest(folder)
    if recorded is None or (recorded.sha256, recorded.import_version) != (gguf_info.sha256, IMPORT_VERSION):
        check_gguf(gguf_info)
        build_import(gguf_info, folder)
    say(dequantized_note(gguf_info))
    return folder, gguf_info


def build_import(info: GGUFInfo, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    source = Path(info.path)
    need = info.parameters * (4 if info.dtype == "float32" else 2) * 1.05
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < need:
        raise ResourceError(f"not enough disk in {folder.parent} to unpack {source.name}: needs ~{need / 1e9:.1f} GB"
                            f" ({info.dtype}), {free / 1e9:.1f} GB free",
                            hint="free some space, or point LORAKIT_CACHE at a larger disk")
    with atomic_dir(folder, force=True, what="GGUF import", ours_only=False) as staging:
        with err.status(f"Unpacking {source.name} ({info.describe()}) into {folder.name}..."):
            try:
                _, tokenizer_fixes = import_tokenizer(source, staging)
                route_gguf_loading_bar()
                model = AutoModelForCausalLM.from_pretrained(
                    source.parent, gguf_file=source.name, dtype=getattr(torch, info.dtype),
                    # dense weights whatever kernels are installed: training needs plain nn.Linear layers
                    quantization_config=GgufConfig(dequantize=True))
            except (ValueError, KeyError, NotImplementedError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise ModelError(f"{source.name} ({info.describe()}) cannot be read by transformers: {first}",
                                 hint="use the model's safetensors release instead") from None
            drop_gguf_quantizer(model)
            model.save_pretrained(staging)
        write_manifest(staging, GGUFImportManifest(
            stage=IMPORT_KIND, kind=IMPORT_KIND, import_version=IMPORT_VERSION, **asdict(info),
            quantized=info.quantized, dequantized=True, dtype=info.dtype, tokenizer_fixes=tokenizer_fixes,
            note=dequantized_note(info), created_at=now(), versions=package_versions()))


# Where transformers' GGUF tokenizer rebuild (5.24) tokenizes differently from llama.cpp, which is what the model
# was run with, and from the release it was converted from. lorakit edits the saved tokenizer.json to match:
# - pre-tokenizers that split digits one by one before GPT-2's regex are rebuilt as plain GPT-2 (its table lacks
#   them), so "2024" would be cut differently;
SINGLE_DIGIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")
# - llama.cpp looks a whole pre-token up in the vocabulary before merging for these (tokenizer.json's
#   ignore_merges, which the rebuild drops: "Việt" comes out as 3 tokens instead of 1);
IGNORE_MERGES_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "tekken", "minicpm5")
# - SentencePiece vocabularies get the dummy-prefix space at the start of the text only, while llama.cpp (like
#   sentencepiece) also puts one after every special token and keeps it before leading spaces: "<s>[INST]" is
#   "<s> ▁[ INST ]" there, "<s> [ INST ]" in the rebuild.
# - llama.cpp strips the whitespace after every special token of models whose *name* says Phi-3 (RSTRIP; the
#   file has no such flag), and the rebuild does not.
PHI3_NAMES = ("phi-3", "phi3")
PHI3_KEEP = ("<unk>", "<s>", "<|endoftext|>")  # the special tokens llama.cpp leaves alone there
SPM_PREPEND = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                   {"type": "Replace", "pattern": {"String": " "},
                                                    "content": "\u2581"}]}


def match_llama_cpp(tokenizer_json: dict[str, Any], metadata: dict[str, Any]) -> list[str]:
    """Edit a tokenizer.json rebuilt from GGUF metadata so it cuts text as llama.cpp does; returns what changed."""
    changed = []
    pre_name, kind = metadata.get("tokenizer.ggml.pre"), metadata.get("tokenizer.ggml.model")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    model = tokenizer_json.get("model") or {}
    if pre_name in SINGLE_DIGIT_PRE and pre.get("type") == "ByteLevel":
        tokenizer_json["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
        changed.append(f"digits split one by one ({pre_name})")
    if pre_name in IGNORE_MERGES_PRE and model.get("type") == "BPE" and not model.get("ignore_merges"):
        model["ignore_merges"] = True
        changed.append(f"whole words looked up before merging ({pre_name})")
    if (kind == "llama" and metadata.get("tokenizer.ggml.add_space_prefix", True) and pre.get("type") == "Metaspace"
            and not tokenizer_json.get("normalizer")):
        tokenizer_json["normalizer"], tokenizer_json["pre_tokenizer"] = SPM_PREPEND, None
        changed.append("SentencePiece prefix space after special tokens")
    name = str(metadata.get("general.name") or "").lower()
    if any(tag in name for tag in PHI3_NAMES):
        stripped = [t for t in tokenizer_json.get("added_tokens", [])
                    if t.get("special") and t["content"] not in PHI3_KEEP and not t.get("rstrip")]
        for token in stripped:
            token["rstrip"] = True
        if stripped:
            changed.append("whitespace after special tokens stripped (Phi-3)")
    return changed


def import_tokenizer(gguf_path: Path, target: Path):
    """The tokenizer of a GGUF file saved into `target` as transformers builds it, edited to match llama.cpp."""
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (TypeError, ValueError, StrictDataclassFieldValidationError):
        # AutoTokenizer reads the model config first, and some configs do not fit transformers' classes (Gemma 4's
        # per-layer head counts); the tokenizer part converts fine on its own
        tokenizer = PreTrainedTokenizerFast.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(target)
    file = target / "tokenizer.json"
    tokenizer_json = json.loads(file.read_text())
    changed = match_llama_cpp(tokenizer_json, gguf_metadata(gguf_path))
    if changed:
        write_json_atomic(file, tokenizer_json)
        tokenizer = AutoTokenizer.from_pretrained(target)
    return tokenizer, changed


def gguf_metadata(path: Path, keys=("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_space_prefix",
                                    "general.architecture", "general.name")) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(path)
    return {key: _field(reader, key) for key in keys if key in reader.fields}


def source_record(folder: str | Path) -> GGUFSource | None:
    """What a run's manifest records about a base imported from GGUF: enough to find or rebuild it later."""
    manifest = read_import_manifest(folder)
    if manifest is None:
        return None
    return GGUFSource(**{key: getattr(manifest, key) for key in GGUFSource.model_fields})
