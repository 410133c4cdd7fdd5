"""Typed manifests: what every command reads back from a folder lorakit wrote, including folders written by earlier
lorakit versions (before typed manifests, multi-process training, serving records) and written by hand."""

import json
import re

import pytest

from lorakit.errors import RunError
from lorakit.outputs import (
    Damaged,
    DPOManifest,
    ExportManifest,
    GGUFImportManifest,
    MergeManifest,
    SFTManifest,
    open_output,
    read_manifest,
    write_manifest,
)

# An SFT run as the first lorakit with run folders wrote it (no speed, optimizer, distributed or warnings records).
OLD_SFT = {
    "stage": "sft", "status": "complete", "started_at": "2026-11-22T15:00:00+00:00",
    "versions": {"lorakit": "0.1.0", "python": "3.11.7", "torch": "2.9.0"},
    "base_model": {"name": "builtin:tiny-llama", "location": "/cache/models/tiny-llama", "revision": None},
    "method": "lora", "device": "cpu", "precision": "fp32",
    "dataset": {"source": "chats.jsonl", "format": "messages", "fingerprint": "abc", "rows": 50, "eval_rows": 0,
                "tokens": 4000, "trained_tokens": 1000, "truncated": 0, "max_length": 120},
    "parent": None, "trainable_parameters": 12, "total_parameters": 100, "vram_estimate": None,
    "finished_at": "2026-11-22T15:01:00+00:00",
    "summary": {"run": "out/sft", "base_model": "builtin:tiny-llama", "method": "lora", "examples": 50, "steps": 20,
                "final_loss": 0.5, "train_seconds": 12.0},
}
# A merge before base records carried a revision, and an export before verified_runtimes and template_family.
OLD_MERGE = {"stage": "merge", "status": "complete", "created_at": "2026-11-23T10:00:00+00:00", "source": "/w/out/sft",
             "base_model": {"name": "builtin:tiny-llama", "location": "/cache/models/tiny-llama"},
             "lineage": [{"stage": "sft", "path": "/w/out/sft", "finished_at": "2026-11-22T15:01:00+00:00"}],
             "method": "lora", "mode": "lora", "dtype": "bfloat16", "shards": 1,
             "gap": {"mean_kl": 1e-4, "top1_agreement": 1.0}, "versions": {"lorakit": "0.1.0"}}
OLD_EXPORT = {"stage": "quantize", "status": "complete", "created_at": "2026-11-24T10:00:00+00:00",
              "source": "/w/out/sft-merged", "format": "gguf", "type": "q8_0", "files": ["model-q8_0.gguf"],
              "sizes": {"model-q8_0.gguf": 975488, "README.md": 2000}, "verification": None,
              "versions": {"lorakit": "0.1.0"}}
# A GGUF base unpacked into the cache before manifests had a stage: `kind` said what it was.
OLD_IMPORT = {"kind": "gguf-import", "import_version": 2, "path": "/m/tiny.Q8_0.gguf", "sha256": "f6b9f7678537",
              "size": 1000, "architecture": "llama", "name": "tiny", "file_type": "MOSTLY_Q8_0",
              "tensor_types": {"Q8_0": 14, "F32": 5}, "parameters": 100, "pre_tokenizer": "llama-bpe",
              "quantized": True, "dequantized": True, "dtype": "float32", "tokenizer_fixes": [], "note": "n",
              "created_at": "2026-11-25T10:00:00+00:00", "versions": {"lorakit": "0.1.0"}}


def write(folder, manifest):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("manifest, kind, cls", [(OLD_SFT, "sft", SFTManifest), (OLD_MERGE, "merged", MergeManifest),
                                                 (OLD_EXPORT, "export", ExportManifest),
                                                 (OLD_IMPORT, "gguf-import", GGUFImportManifest)])
def test_manifests_of_earlier_versions_still_open(tmp_path, manifest, kind, cls):
    output = open_output(write(tmp_path / "out", manifest))
    assert output.kind == kind and isinstance(output.manifest, cls) and output.complete == (kind != "gguf-import")
    write_manifest(tmp_path / "out", output.manifest)  # written back, it reads the same
    assert read_manifest(tmp_path / "out") == output.manifest


def test_lineage_walks_parents_and_sources_down_to_the_base(tmp_path):
    sft = write(tmp_path / "sft", OLD_SFT)
    dpo = write(tmp_path / "dpo", {"stage": "dpo", "status": "complete", "base_model": {"name": "builtin:tiny-llama"},
                                   "parent": {"path": str(sft), "stage": "sft"}})
    merged = write(tmp_path / "merged", {**OLD_MERGE, "source": str(dpo)})
    export = write(tmp_path / "export", {**OLD_EXPORT, "source": str(merged)})
    lineage = open_output(export).lineage()
    assert [o.kind for o in lineage.outputs] == ["export", "merged", "dpo", "sft"] and lineage.missing is None
    assert isinstance(lineage.outputs[2].manifest, DPOManifest)
    (export / "model-q8_0.gguf").write_bytes(b"GGUF")
    given_a_file = open_output(export / "model-q8_0.gguf")
    assert given_a_file.kind == "export" and given_a_file.gguf == export / "model-q8_0.gguf"
    (dpo / "manifest.json").unlink()  # a parent that is gone ends the chain, named
    assert open_output(export).lineage().missing == str(dpo)


@pytest.mark.parametrize("change, words", [
    ({"summary": [1]}, "summary is not an object (it is a list)"),
    ({"trainable_parameters": "9"}, "trainable_parameters is not an integer (it is a string)"),
    ({"parent": {"path": 3}}, "parent.path is not a string (it is a number)"),
    ({"base_model": {"location": "x"}}, "base_model.name is missing"),
    ({"colour": "blue"}, "colour is not a field of a sft manifest"),
])
def test_a_field_of_the_wrong_shape_is_named(tmp_path, change, words):
    folder = write(tmp_path / "run", {**OLD_SFT, **change})
    (folder / "lorakit.yaml").write_text("stage: sft\n")
    with pytest.raises(Damaged, match=re.escape(f"run {folder} is damaged: manifest.json: {words}")):
        open_output(folder)


def test_sizes_must_be_numbers(tmp_path):
    folder = write(tmp_path / "export", {**OLD_EXPORT, "sizes": {"model-q8_0.gguf": "big"}})
    with pytest.raises(Damaged, match="sizes.model-q8_0.gguf is not a number"):
        open_output(folder)


def test_what_is_not_a_typed_manifest(tmp_path):
    assert open_output(write(tmp_path / "marked", {})).manifest is None  # a folder marked as lorakit's by hand
    odd = open_output(write(tmp_path / "odd", {"stage": ["sft"]}))
    assert odd.kind == "unknown" and odd.stage == ["sft"]
    with pytest.raises(RunError, match="malformed JSON"):
        (tmp_path / "garbled").mkdir()
        (tmp_path / "garbled" / "manifest.json").write_text("{")
        open_output(tmp_path / "garbled")


def test_writers_cannot_add_a_field_the_model_does_not_know():
    with pytest.raises(ValueError, match="colour"):
        MergeManifest(stage="merge", colour="blue")
