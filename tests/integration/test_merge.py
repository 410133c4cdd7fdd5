"""Merging real runs: exact for LoRA, exact for QLoRA in dequantized mode, clean standalone output, clean errors."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorakit.errors import ModelError, RunError
from lorakit.export.merge import merge_run
from lorakit.outputs import read_run
from lorakit.train.sft import run_sft

from ..conftest import REPO, sft_recipe
from ..helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow

PROBE = torch.tensor([[4, 10, 55, 120, 33, 8, 91, 2]])


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    import os

    old = os.getcwd()
    os.chdir(REPO)
    try:
        return run_sft(sft_recipe(tmp_path_factory.mktemp("q") / "qlora", "method=qlora", "data.eval=null",
                                  max_steps=60)).path
    finally:
        os.chdir(old)


def peft_logits(run_path):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(read_run(run_path).base_model, dtype=torch.float32)
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(run_path)).eval()(input_ids=PROBE).logits


def plain_logits(folder):
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(str(folder)).eval()(input_ids=PROBE).logits


def test_lora_fp32_merge_equals_the_peft_model(sft_run, tmp_path):
    result = merge_run(sft_run.path, tmp_path / "merged", dtype="float32")
    assert torch.allclose(plain_logits(result.path), peft_logits(sft_run.path), atol=1e-4)
    assert result.gap["mean_kl"] < 1e-6 and result.gap["top1_agreement"] == 1.0
    assert result.gap["samples"].startswith("8 chats from the data of")


def test_a_bf16_run_merges_into_float32_as_trained(tmp_path):
    """A run that trained its fp32 base in bf16 (a GGUF base on a GPU, GRPO on a CPU with native bf16) learned the
    bf16 rounding of the base: its float32 merge is that rounding widened, plus the adapter, and reproduces it."""
    from peft import PeftModel

    run = run_sft(sft_recipe(tmp_path / "bf16", "train.precision=bf16", "data.eval=null", max_steps=10)).path
    assert read_run(run).manifest["precision"] == "bf16"
    result = merge_run(run, tmp_path / "merged", dtype="float32")
    assert result.gap["mean_kl"] < 1e-6 and result.gap["top1_agreement"] == 1.0
    base = AutoModelForCausalLM.from_pretrained(read_run(run).base_model, dtype=torch.bfloat16).float()
    with torch.no_grad():
        as_trained = PeftModel.from_pretrained(base, str(run)).eval()(input_ids=PROBE).logits
    merged = plain_logits(result.path)
    assert torch.allclose(merged, as_trained, atol=1e-4)
    assert not torch.allclose(merged, peft_logits(run), atol=1e-4)  # not the adapter over the unrounded fp32 base


def test_merged_folder_is_standalone(sft_run, tmp_path):
    result = merge_run(sft_run.path, tmp_path / "merged")  # bf16 default
    files = {p.name for p in result.path.iterdir()}
    assert "adapter_config.json" not in files and not any(f.endswith((".bin", ".pt")) for f in files)
    config = json.loads((result.path / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(result.path / "model.safetensors"), framework="pt") as handle:
        assert not any("lora" in key or "base_layer" in key for key in handle.keys())
    model = AutoModelForCausalLM.from_pretrained(str(result.path))
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(str(result.path))
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(str(sft_run.path)).chat_template
    eos = json.loads((result.path / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos and tokenizer.eos_token_id in eos
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["lineage"][0]["stage"] == "sft" and manifest["mode"] == "lora"
    card = (result.path / "README.md").read_text()
    assert "builtin:tiny-llama" in card and "merge mode | lora" in card
    assert result.gap["mean_kl"] < 2e-3


def test_qlora_dequantized_reproduces_the_trained_model_and_beats_original(qlora_run, tmp_path):
    exact = merge_run(qlora_run, tmp_path / "dequantized", dtype="float32", base_mode="dequantized")
    original = merge_run(qlora_run, tmp_path / "original", dtype="float32", base_mode="original")
    assert exact.gap["mean_kl"] < 1e-6 and exact.gap["top1_agreement"] == 1.0
    assert original.gap["mean_kl"] > 1000 * exact.gap["mean_kl"]
    assert original.gap["top1_agreement"] < 1.0
    bf16 = merge_run(qlora_run, tmp_path / "bf16")
    assert bf16.gap["mean_kl"] < original.gap["mean_kl"] / 10


@pytest.mark.parametrize("variant", ["lora.use_dora=true", "lora.use_rslora=true",
                                     "lora.modules_to_save=[lm_head]"])
def test_dora_rslora_and_modules_to_save_merge_exactly(tmp_path, variant):
    run = run_sft(sft_recipe(tmp_path / "run", variant, "data.eval=null", max_steps=15)).path
    result = merge_run(run, tmp_path / "merged", dtype="float32")
    assert torch.allclose(plain_logits(result.path), peft_logits(run), atol=1e-4)
    assert result.gap["mean_kl"] < 1e-6


def test_shards_and_bare_adapter_with_model(sft_run, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(sft_run.path / name, adapter / name)
    base = read_run(sft_run.path).base_model
    result = merge_run(adapter, tmp_path / "merged", dtype="float32", model=base, max_shard_size="1MB")
    assert (result.path / "model.safetensors.index.json").exists()
    assert len(list(result.path.glob("model-*.safetensors"))) > 1
    assert torch.allclose(plain_logits(result.path), peft_logits(sft_run.path), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clean line, nothing written


def merge(*args):
    return invoke("merge", *args)


def test_missing_adapter_files(sft_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(sft_run.path, broken)
    (broken / "adapter_model.safetensors").unlink()
    assert_clean_error(merge(broken, "-o", tmp_path / "out"), "missing adapter file(s): adapter_model.safetensors",
                       leftover=tmp_path / "out")


def test_adapter_on_a_different_base_names_the_module(sft_run, tmp_path, tiny_llama):
    assert_clean_error(merge(sft_run.path, "--model", tiny_llama, "-o", tmp_path / "out"),
                 "adapter module model.layers.0.mlp.down_proj does not fit the base",
                       leftover=tmp_path / "out")


def test_base_not_found(sft_run, tmp_path):
    assert_clean_error(merge(sft_run.path, "--model", tmp_path / "nope", "-o", tmp_path / "out"), "not found",
                       leftover=tmp_path / "out")
    # a hub id that is not cached, offline: the same clean error as sft and dpo give
    assert_clean_error(merge(sft_run.path, "--model", "no-such-org/no-such-model", "-o", tmp_path / "out"),
                 "could not be fetched", leftover=tmp_path / "out")


@pytest.mark.parametrize("size", ["0", "abc", "-5MB", "0GB"])
def test_bad_shard_size(sft_run, tmp_path, size):
    assert_clean_error(merge(sft_run.path, "--max-shard-size", size, "-o", tmp_path / "out"), "not a positive size",
                       leftover=tmp_path / "out")


def test_output_exists(sft_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert_clean_error(merge(sft_run.path, "-o", out), "already exists")
    assert (out / "keep").read_text() == "x"


def test_not_a_run_folder(tmp_path):
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert_clean_error(merge(folder, "-o", tmp_path / "out"), "is not a lorakit run or a PEFT adapter folder",
                       leftover=tmp_path / "out")


def test_force_does_not_replace_the_run_it_merges_or_the_folder_holding_it(sft_run, tmp_path):
    nest = tmp_path / "nest"
    run = nest / "run"
    shutil.copytree(sft_run.path, run, ignore=shutil.ignore_patterns("checkpoints"))
    for output in (run, nest):
        result = merge(run, "--output-dir", output, "--force")
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert (run / "adapter_model.safetensors").is_file()
    dpo = invoke("dpo", "--from", run, "--output-dir", nest, "--force")
    assert dpo.exit_code != 0 and "which this command reads" in dpo.output, dpo.output
    assert (run / "adapter_model.safetensors").is_file()


def test_a_gap_above_tolerance_writes_nothing(qlora_run, tmp_path, monkeypatch):
    import lorakit.export.merge as merge_module

    # the float32 dequantized merge is exact (KL 0); bf16 rounding leaves a real gap to exceed
    monkeypatch.setitem(merge_module.TOLERANCE, "bfloat16", 1e-9)
    with pytest.raises(ModelError, match="nothing was written"):
        merge_run(qlora_run, tmp_path / "out", dtype="bfloat16")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    with pytest.raises(RunError):
        merge_run(tmp_path / "missing", tmp_path / "out2")
