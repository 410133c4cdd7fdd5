"""A GGUF file as the base model: unpacked once into a cached folder, recorded in the run, found again later.

The GGUF here is the tiny model exported by lorakit itself (q8_0); tests/real/ does the same with SmolLM2's release.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from lorakit.cache import cache_dir
from lorakit.errors import ModelError
from lorakit.model import resolve_model_source

from ..conftest import REPO, sft_recipe


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from lorakit.export.gguf_export import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    write_gguf(tiny_llama, path, "q8_0", AutoTokenizer.from_pretrained(tiny_llama))
    return path


def test_a_gguf_is_unpacked_once_into_a_cached_folder_that_says_what_it_holds(tiny_gguf, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(str(tiny_gguf))
    folder = Path(source.location)
    assert folder.parent == cache_dir() / "models" and folder.name.startswith("gguf-tiny-llama.Q8_0-")
    manifest = json.loads((folder / "manifest.json").read_text())
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert (manifest["kind"], manifest["sha256"], manifest["file_type"]) == ("gguf-import", sha, "MOSTLY_Q8_0")
    assert manifest["quantized"] and manifest["dequantized"] and manifest["dtype"] == "float32"
    assert "not on the original full-precision release" in manifest["note"]
    assert source.record()["gguf"]["sha256"] == sha and source.record()["gguf"]["path"] == str(tiny_gguf)

    # the unpacked model is the q8_0 model: next-token predictions of the original, up to q8_0's rounding
    ids = torch.tensor([list(range(5, 45))])
    original = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    unpacked = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        p = original(ids).logits.log_softmax(-1)
        q = unpacked(ids).logits.log_softmax(-1)
    assert (p.exp() * (p - q)).sum(-1).mean() < 2e-3
    assert not torch.equal(p, q)  # dequantized, not a copy of the original
    text = "The capital of France is Paris. 2024: 3.14!"
    assert (AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]
            == AutoTokenizer.from_pretrained(tiny_llama)(text, add_special_tokens=False)["input_ids"])

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source(str(tiny_gguf)).location == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # the second use unpacks nothing


@pytest.mark.slow
def test_a_run_on_a_gguf_names_it_and_merge_unpacks_it_again_when_the_cache_is_gone(tiny_gguf, tmp_path,
                                                                                      monkeypatch):
    from lorakit.export.merge import merge_run
    from lorakit.outputs import manifest_json as read_manifest
    from lorakit.train.sft import run_sft

    monkeypatch.chdir(REPO)
    run = run_sft(sft_recipe(tmp_path / "sft", f"model.name_or_path={tiny_gguf}", max_steps=3)).path
    base = read_manifest(run)["base_model"]
    assert base["name"] == str(tiny_gguf) and base["gguf"]["file_type"] == "MOSTLY_Q8_0"
    assert "dequantized" in (run / "README.md").read_text()

    shutil.rmtree(base["location"])  # the cache was cleared: the same file (same SHA-256) is unpacked again
    merged = merge_run(run, tmp_path / "merged")
    assert merged.manifest["base_model"]["gguf"]["sha256"] == base["gguf"]["sha256"]
    assert Path(base["location"]).is_dir()

    shutil.rmtree(base["location"])
    tiny_gguf.with_name("moved.gguf").write_bytes(tiny_gguf.read_bytes())
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:-64] + bytes(64))  # same path, other content
    try:
        with pytest.raises(ModelError, match="which has changed since"):
            merge_run(run, tmp_path / "merged-again")
    finally:
        tiny_gguf.write_bytes(tiny_gguf.with_name("moved.gguf").read_bytes())
