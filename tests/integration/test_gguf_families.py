"""Every family of docs/gguf.md's table exports to GGUF through llama.cpp's converter and is read back and verified.

The default tier exports the families marked `ci` (Qwen3-MoE, Gemma 3, OLMo-2: an MoE, a family transformers reads
with its own conventions, one only llama.cpp reads); `LORAKIT_REAL_FULL=1` (make test-real) exports all of them.
Each conversion starts the converter's subprocess (~10 s of imports on 2 cores), so the rest stay out of CI time.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from lorakit.export.gguf_verify import transformers_reads
from lorakit.export.quantize import run_quantize
from lorakit.export.verify import KL_TOLERANCE
from tests.gguf_families import FAMILIES, build_family_model

pytestmark = pytest.mark.slow
FULL = os.environ.get("LORAKIT_REAL_FULL") == "1"
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_the_family_exports_and_reads_back_as_its_source(family, tmp_path):
    if not (family.ci or FULL):
        pytest.skip("exported in the full tier: LORAKIT_REAL_FULL=1 (make test-real)")
    readable = transformers_reads(family.gguf_arch) and family.transformers_judges
    if not readable and not HAS_LLAMA_CPP:
        pytest.skip(f"transformers cannot read GGUF '{family.gguf_arch}' and llama-cpp-python is not installed")
    folder = build_family_model(family, tmp_path / "merged")
    result = run_quantize(folder, "gguf", "q8_0")
    assert result.path == tmp_path / "merged-gguf-q8_0"
    manifest = json.loads((result.path / "manifest.json").read_text())
    verification = manifest["verification"]
    assert manifest["gguf"]["architecture"] == family.gguf_arch
    assert manifest["gguf"]["tokenizer"]["pre"] == "llama-bpe"
    assert verification["judged_by"] == ("transformers" if readable else "llama.cpp")
    assert verification["mean_kl"] <= KL_TOLERANCE["q8_0"] and verification["top1_agreement"] >= 0.85
    tokenization = verification.get("tokenization")
    if tokenization is None:  # transformers' Gemma tokenizer rebuild wants a SentencePiece <unk>: only llama.cpp checks it
        assert not HAS_LLAMA_CPP and verification.get("tokenizer_rebuild_error"), verification
    else:
        assert tokenization["mismatches"] == 0
    if readable:
        assert verification["tensors"] > 0 and verification["max_rel_rms_error"] < 0.02
    if HAS_LLAMA_CPP:
        assert verification["llama_cpp"]["mean_kl"] <= KL_TOLERANCE["q8_0"]
        assert "llama.cpp" in manifest["verified_runtimes"]
