"""Mixture-of-experts through every stage: a tiny Qwen3-MoE (transformers' own config) trains with LoRA on its expert
weights (`lora.target_parameters`, PEFT's ParamWrapper), merges into its 16/32-bit base with PEFT's merge, and
exports to GGUF. QLoRA (the attention in NF4, the fused experts kept in 16 bits by bitsandbytes) runs in the full
tier (LORAKIT_REAL_FULL=1)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors import safe_open

from lorakit.errors import ModelError
from tests.conftest import REPO
from tests.gguf_families import FAMILIES, build_family_model
from tests.helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow
EXPERTS = "lora.target_parameters=[mlp.experts.gate_up_proj,mlp.experts.down_proj]"


@pytest.fixture(scope="module")
def moe_base(tmp_path_factory):
    family = next(f for f in FAMILIES if f.name == "Qwen3-MoE")
    return build_family_model(family, tmp_path_factory.mktemp("moe") / "qwen3-moe")


def train(base, out, method="lora", *overrides):
    from lorakit.config import load_recipe
    from lorakit.train.sft import run_sft

    old = os.getcwd()
    os.chdir(REPO)
    try:
        recipe = load_recipe("sft", REPO / "recipes" / "tiny-cpu-sft.yaml",
                             ["lora.target_modules=[q_proj,v_proj]", EXPERTS, f"method={method}", "data.max_rows=8",
                              *overrides], {"output_dir": str(out), "model": str(base), "max_steps": 2})
        return run_sft(recipe)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def moe_run(moe_base, tmp_path_factory):
    return train(moe_base, tmp_path_factory.mktemp("moe-run") / "sft")


def expert_keys(adapter):
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if ".experts." in key}


def test_lora_on_the_experts_trains_merges_and_exports_to_gguf(moe_run, tmp_path):
    from lorakit.export.merge import merge_run
    from lorakit.export.quantize import run_quantize

    run = moe_run
    experts = expert_keys(run.path)
    assert len(experts) == 8  # 2 layers x 2 expert parameters x (A, B)
    assert any(key.endswith("lora_B.weight") and tensor.abs().sum() > 0 for key, tensor in experts.items())
    assert json.loads((run.path / "adapter_config.json").read_text())["target_parameters"]

    merged = merge_run(run.path, tmp_path / "merged", dtype="float32")
    assert merged.gap["mean_kl"] < 1e-5  # PEFT's merge of the expert deltas reproduces the trained model
    export = run_quantize(merged.path, "gguf", "q8_0")
    manifest = json.loads((export.path / "manifest.json").read_text())
    assert manifest["gguf"]["architecture"] == "qwen3moe"
    assert manifest["verification"]["mean_kl"] <= manifest["verification"]["tolerance_kl"]


def test_a_damaged_expert_adapter_is_still_refused(moe_run, tmp_path):
    from safetensors.torch import save_file

    run = moe_run
    broken = tmp_path / "broken"
    shutil.copytree(run.path, broken)
    tensors = expert_keys(run.path)
    with safe_open(str(run.path / "adapter_model.safetensors"), framework="pt") as handle:
        everything = {key: handle.get_tensor(key) for key in handle.keys()}
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    # one rank short on both sides: A and B still agree, but no longer hold a whole rank-r pair per expert
    everything[key] = everything[key][:-1]
    partner = key.replace("lora_A", "lora_B")
    everything[partner] = everything[partner][:, :-1].contiguous()
    save_file(everything, str(broken / "adapter_model.safetensors"))
    assert_clean_error(invoke("merge", broken), "is damaged", "not a multiple of r=16",
                       leftover=tmp_path / "broken-merged")


def test_target_parameters_the_model_lacks_are_named_before_training(moe_base, tmp_path):
    with pytest.raises(ModelError, match="lora.target_parameters names parameter.*mlp.experts.nope"):
        train(moe_base, tmp_path / "sft", "lora", "lora.target_parameters=[mlp.experts.nope]")


@pytest.mark.skipif(os.environ.get("LORAKIT_REAL_FULL") != "1", reason="full tier: LORAKIT_REAL_FULL=1")
def test_qlora_on_the_experts_merges_dequantized_and_exports(moe_base, tmp_path):
    from lorakit.export.merge import merge_run
    from lorakit.export.quantize import run_quantize

    run = train(moe_base, tmp_path / "sft", "qlora")
    merged = merge_run(run.path, tmp_path / "merged", dtype="float32")
    assert merged.mode == "dequantized" and merged.gap["mean_kl"] < 1e-5
    export = run_quantize(merged.path, "gguf", "q8_0")
    assert json.loads((export.path / "manifest.json").read_text())["gguf"]["architecture"] == "qwen3moe"
