"""llama.cpp's official converter (convert_hf_to_gguf.py, run with its own in-tree gguf-py) and a field-by-field,
tensor-by-tensor comparison of two GGUF files."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.real import artifacts

# Every field where lorakit's GGUF and the official converter's differ on the same merged model, and why ({arch} is
# the architecture prefix). docs/real-models.md (the official converter) gives the same reasons.
EXPLAINED = {
    "general.name": "lorakit names the model after its folder; the converter title-cases the folder name",
    "general.basename": "the converter guesses basename/finetune/size label from the folder name; lorakit does not",
    "general.finetune": "(the converter's guess from the folder name)",
    "general.base_model.count": "the converter copies the model card's base_model (a local GGUF path becomes a "
                                "huggingface.co URL that does not exist) and tags; lorakit writes neither",
    "general.base_model.0.name": "(same)",
    "general.base_model.0.repo_url": "(same)",
    "general.tags": "(same)",
    "{arch}.attention.key_length": "lorakit writes head sizes for every architecture (the value llama.cpp derives)",
    "{arch}.attention.value_length": "(same)",
    "{arch}.rope.dimension_count": "lorakit writes it for every architecture (the value llama.cpp derives)",
    "{arch}.vocab_size": "(same)",
    "tokenizer.ggml.add_bos_token": "lorakit writes BOS as training saw it; the converter copies tokenizer_config",
    "tokenizer.ggml.add_eos_token": "lorakit writes false explicitly; the converter leaves it to the default (false)",
    "tokenizer.ggml.add_sep_token": "the converter writes false; lorakit leaves it to the default (false)",
    "tokenizer.ggml.add_space_prefix": "lorakit writes the tokenizer's prefix rule; the converter leaves the default",
    "tokenizer.ggml.eot_token_id": "lorakit writes the chat template's end-of-turn token; the converter does not",
    "tokenizer.ggml.scores": "without tokenizer.model the converter gives every token -1000 (llama.cpp then merges "
                             "left to right); lorakit derives the scores from the merge order",
}
# Differences explained only for these exact values. The converter names a BPE pre-tokenizer by hashing the ids of
# a probe text, BOS included: a Llama 3 vocabulary whose tokenizer adds no BOS of its own (as transformers rebuilds
# it from a GGUF without add_bos_token) hashes as Smaug's (c136ed14...), the same regex without BOS and
# ignore_merges. lorakit reads the name the vocabulary file itself carries.
EXPLAINED_VALUES = {
    ("tokenizer.ggml.pre", "llama-bpe", "smaug-bpe"): "the converter's probe hash sees no BOS (see above)",
}


def unexplained(comparison: "Comparison", arch: str) -> list[str]:
    return [key for key, ours, official in comparison.fields
            if key.replace(f"{arch}.", "{arch}.", 1) not in EXPLAINED
            and not (isinstance(ours, str) and isinstance(official, str)
                     and (key, ours, official) in EXPLAINED_VALUES)]


def convert_official(folder: Path, outfile: Path, outtype: str) -> subprocess.CompletedProcess:
    """Run the official converter in a subprocess: its gguf-py is newer than the installed one and must not mix."""
    converter = artifacts.converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(converter / "gguf-py"), str(converter)]),
               NO_LOCAL_GGUF="")
    return subprocess.run([sys.executable, str(converter / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype,
                           "--outfile", str(outfile)], env=env, capture_output=True, text=True, timeout=1800)


def _value(item):
    try:
        return item.contents()
    except Exception:  # an array type gguf-py cannot list
        return "?"


def read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {key: _value(item) for key, item in reader.fields.items() if not key.startswith("GGUF.")}
    return fields, {tensor.name: tensor for tensor in reader.tensors}


@dataclass
class Comparison:
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, ours, official) where they differ
    same_fields: int = 0
    only_ours: list[str] = field(default_factory=list)
    only_official: list[str] = field(default_factory=list)
    tensors_differ: list[tuple[str, str]] = field(default_factory=list)  # (name, what differs)
    tensors_same: int = 0


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and isinstance(a[0], float):
        import numpy as np

        return bool(np.array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)))
    return a == b


def compare(ours: Path, official: Path) -> Comparison:
    import numpy as np

    fields_a, tensors_a = read(ours)
    fields_b, tensors_b = read(official)
    result = Comparison()
    for key in sorted(set(fields_a) | set(fields_b)):
        a, b = fields_a.get(key, "<absent>"), fields_b.get(key, "<absent>")
        if _same(a, b):
            result.same_fields += 1
        else:
            result.fields.append((key, a, b))
    result.only_ours = sorted(set(tensors_a) - set(tensors_b))
    result.only_official = sorted(set(tensors_b) - set(tensors_a))
    for name in sorted(set(tensors_a) & set(tensors_b)):
        a, b = tensors_a[name], tensors_b[name]
        if a.tensor_type != b.tensor_type:
            result.tensors_differ.append((name, f"type {a.tensor_type.name} vs {b.tensor_type.name}"))
        elif list(a.shape) != list(b.shape):
            result.tensors_differ.append((name, f"shape {list(a.shape)} vs {list(b.shape)}"))
        elif not np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)):
            result.tensors_differ.append((name, "bytes"))
        else:
            result.tensors_same += 1
    return result


def short(value) -> str:
    if isinstance(value, list):
        return f"[{len(value)} items]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def table(comparison: Comparison) -> str:
    lines = ["| field | lorakit | official |", "|---|---|---|"]
    lines += [f"| `{key}` | {short(a)} | {short(b)} |" for key, a, b in comparison.fields]
    lines.append(f"\n{comparison.same_fields} fields equal; tensors: {comparison.tensors_same} byte-identical, "
                 f"{len(comparison.tensors_differ)} differ, {len(comparison.only_ours)} only in lorakit's, "
                 f"{len(comparison.only_official)} only in the official file")
    return "\n".join(lines)
