"""compressed-tensors exports (W4A16, W8A8, FP8) of a trained tiny model, several targets from one merge, and the
pipeline's `quantize.targets`: each folder reloads in transformers on the CPU within its format's tolerance."""

import json
import os
import shutil

import pytest

from lorakit.export.compressed import KL_TOLERANCE as CT_TOLERANCE
from lorakit.export.quantize import quantize_targets, run_quantize
from lorakit.export.serve_info import serve_info
from lorakit.export.targets import parse_target
from lorakit.export.verify import KL_TOLERANCE
from lorakit.outputs import manifest_json as read_manifest

from ..helpers import invoke

pytestmark = pytest.mark.slow

CONFIG_FORMAT = {"w4a16": "pack-quantized", "w8a8": "int-quantized", "fp8": "float-quantized"}


@pytest.fixture(scope="module")
def run_copy(sft_run, tmp_path_factory):
    """The trained tiny run in a folder of this module's own (merging it writes run-merged beside it)."""
    run = tmp_path_factory.mktemp("ct") / "run"
    shutil.copytree(sft_run.path, run, ignore=shutil.ignore_patterns("checkpoints"))
    return run


@pytest.fixture(scope="module")
def exports(run_copy):
    """GGUF q8_0 and the three data-free compressed-tensors formats, from the run folder: merged once."""
    targets = [parse_target(label) for label in ("gguf-q8_0", "w4a16-rtn", "w8a8-rtn", "fp8-dynamic")]
    return {r.summary["target"]: r for r in quantize_targets(run_copy, targets)}


def test_several_targets_from_one_merge_each_its_own_verified_folder(run_copy, exports):
    merged = run_copy.with_name("run-merged")
    assert read_manifest(merged)["status"] == "complete"
    assert sorted(p.name for p in run_copy.parent.iterdir() if not p.name.startswith(".")) == sorted(
        ["run", "run-merged", "run-merged-gguf-q8_0", "run-merged-w4a16-rtn", "run-merged-w8a8-rtn",
         "run-merged-fp8-dynamic"])
    for label, result in exports.items():
        manifest = read_manifest(result.path)
        assert manifest["status"] == "complete" and manifest["target"] == label
        assert manifest["source"] == str(merged.resolve())  # every target reads the one merge
    assert exports["gguf-q8_0"].summary["mean_kl"] <= KL_TOLERANCE["q8_0"]


@pytest.mark.parametrize("label", ["w4a16-rtn", "w8a8-rtn", "fp8-dynamic"])
def test_data_free_formats_reload_within_tolerance(exports, label):
    from transformers import AutoModelForCausalLM

    result = exports[label]
    fmt = label.split("-")[0]
    summary, manifest = result.summary, read_manifest(result.path)
    assert summary["mean_kl"] <= CT_TOLERANCE[fmt]
    assert summary["top1_agreement"] >= {"w4a16": 0.5, "w8a8": 0.9, "fp8": 0.8}[fmt]
    assert manifest["verification"]["samples"].startswith("8 chats from the data of")  # the run's own chats
    assert manifest["scheme"] == {"w4a16": "W4A16", "w8a8": "W8A8", "fp8": "FP8_DYNAMIC"}[fmt]
    assert manifest["group_size"] == (32 if fmt == "w4a16" else None)  # 352-wide MLP: not a multiple of 128 or 64
    assert manifest["calibration"] is None and manifest["method"] == label.split("-")[1]
    assert set(manifest["unquantized"]) == {"lm_head", "model.embed_tokens.weight"}
    config = json.loads((result.path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == CONFIG_FORMAT[fmt]
    assert config["ignore"] == ["lm_head"]
    # transformers loads it as it is (no lorakit code involved) and it answers like the source
    model = AutoModelForCausalLM.from_pretrained(str(result.path), device_map="cpu")
    assert model.config.quantization_config is not None
    # what a user is told: vLLM's own command, no --quantization flag, and which GPUs run it
    readme = (result.path / "README.md").read_text()
    assert f"vllm serve {result.path.resolve()}" in readme
    assert not [line for line in readme.splitlines() if line.startswith("vllm serve") and "--quantization" in line]
    assert ("compute capability >= 8.9" if fmt == "fp8" else "compute capability >= 8.0") in readme
    vllm = serve_info([result.path])["vllm"]
    assert vllm["argv"][:3] == ["vllm", "serve", str(result.path.resolve())]
    assert "--quantization" not in vllm["argv"]


def test_pipeline_quantize_targets_write_a_folder_each(exports, run_copy, tmp_path):
    from lorakit.config import PipelineRecipe, load_recipe
    from lorakit.pipeline import Pipeline

    from ..conftest import REPO

    root = tmp_path / "pipe"
    root.mkdir()
    shutil.copytree(run_copy.with_name("run-merged"), root / "merged")
    sft = load_recipe("sft", REPO / "recipes" / "tiny-cpu-sft.yaml", [], {})
    recipe = PipelineRecipe(root=str(root), stages=["sft", "merge", "quantize"], sft=sft,
                            quantize={"targets": ["gguf-q8_0", "w8a8-rtn"]})
    pipeline = Pipeline(recipe)
    result = pipeline.run(only=["quantize"])
    assert result.failure is None, result.failure
    for label in ("gguf-q8_0", "w8a8-rtn"):
        assert read_manifest(root / f"export-{label}")["status"] == "complete"
    assert not (root / "export").exists()
    assert [t["target"] for t in result.outcomes[-1].metrics["targets"]] == ["gguf-q8_0", "w8a8-rtn"]
    again = Pipeline(recipe).run(only=["quantize"])
    assert again.outcomes[-1].status == "skipped"
    shutil.rmtree(root / "export-w8a8-rtn")  # one target gone: the stage is not complete
    assert not Pipeline(recipe).is_complete("quantize")


def test_a_run_over_a_base_stored_in_4_bit_is_refused(run_copy, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    manifest = json.loads((run / "manifest.json").read_text())
    base = tmp_path / "nf4-base"
    shutil.copytree(manifest["base_model"]["location"], base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    manifest["base_model"]["location"] = str(base)
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("quantize", run, "--format", "w8a8")
    assert result.exit_code != 0 and "no 16-bit base" in result.output, result.output
    assert not (tmp_path / "run-merged").exists()  # refused before merging


@pytest.mark.skipif(os.environ.get("LORAKIT_TEST_LLMCOMPRESSOR") != "1",
                    reason="creates llm-compressor's environment (~180 MB from PyPI, ~1-2 min) and runs GPTQ "
                           "(~1 min): LORAKIT_TEST_LLMCOMPRESSOR=1 or `make test-llmcompressor`")
def test_gptq_calibrates_on_the_runs_own_chats_in_the_managed_environment(run_copy, exports, tmp_path):
    from lorakit.export import llmcompressor_env

    result = run_quantize(run_copy, "w4a16", None, tmp_path / "gptq", method="gptq")
    manifest = read_manifest(result.path)
    assert manifest["calibration"]["rows"] == 50  # every chat of the run's 50-row training file
    assert "training data of" in manifest["calibration"]["source"]
    assert manifest["llmcompressor"]["environment"] == str(llmcompressor_env.env_dir())
    assert result.summary["mean_kl"] <= CT_TOLERANCE["w4a16"]
    config = json.loads((result.path / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["ignore"] == ["lm_head"]
    tools = json.loads(invoke("env", "--json").stdout)["tools"]
    assert tools["llm-compressor"].startswith(str(llmcompressor_env.env_dir()))
