"""The planner's GRPO terms: completions x (prompt + completion) activations, the generation KV cache as a phase of
its own, the LM head over completion tokens only, the frozen reference adapter, and a colocated vLLM engine's share
of the GPU (awake or asleep); the recipe's GRPO settings reach the estimate; the command line takes --stage grpo."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.vram.catalog import GPUS, find_model
from lorakit.vram.estimate import GIB, Setup, check_setup, estimate
from lorakit.vram.plan import fits

runner = CliRunner()
SHAPE = find_model("Qwen2.5-7B")
GRPO = Setup(method="qlora", stage="grpo", seq_len=1024, completion_len=768, batch_size=8)


def test_activations_count_every_completion_of_the_micro_batch():
    one, eight = estimate(SHAPE, replace(GRPO, batch_size=1)), estimate(SHAPE, GRPO)
    assert eight.tokens == 8 * 1024 == 8 * one.tokens
    for key in ("activations_checkpoints",):
        assert eight.term(key) == pytest.approx(8 * one.term(key))
    # the same rows as SFT, but the head sees only the completion tokens
    sft = estimate(SHAPE, replace(GRPO, stage="sft", loss="plain"))
    grpo = estimate(SHAPE, replace(GRPO, loss="plain", grad_checkpointing=False))
    sft_plain = estimate(SHAPE, replace(GRPO, stage="sft", loss="plain", grad_checkpointing=False))
    assert grpo.term("logits") == pytest.approx(sft_plain.term("logits") * 768 / 1024)
    assert sft.tokens == grpo.tokens


def test_generation_kv_cache_is_its_own_phase():
    est = estimate(SHAPE, GRPO)
    kv = 2 * SHAPE.layers * SHAPE.kv_heads * SHAPE.dim * 2 * 8 * 1024  # bf16, 8 completions x 1024 tokens
    assert est.term("generation_kv") == kv
    assert est.phase("generation") == kv + est.term("generation_scores")
    # the cache is freed before the training forward: it adds to the peak only when it is the larger phase
    assert est.allocated == est.phase("persistent") + max(est.phase("forward/backward"), est.phase("generation"),
                                                          est.phase("optimizer step"))
    # a generation batch of 4 micro-batches (gradient accumulation) holds 4x the cache
    accumulated = estimate(SHAPE, replace(GRPO, grad_accumulation=4))
    assert accumulated.term("generation_kv") == 4 * kv
    long = estimate(SHAPE, replace(GRPO, batch_size=8, grad_accumulation=64, seq_len=4096, completion_len=3072))
    assert long.peak_phase == "generation"


def test_reference_adapter_only_with_beta_and_a_parent():
    plain, ref = estimate(SHAPE, GRPO), estimate(SHAPE, replace(GRPO, grpo_reference=True))
    assert ref.term("lora_weights") == pytest.approx(2 * plain.term("lora_weights"))


def test_vllm_colocate_takes_its_share_of_the_gpu():
    gpu = GPUS["rtx4090"]
    vllm = estimate(SHAPE, replace(GRPO, generation="vllm", vllm_gpu_share=0.3))
    engine = vllm.term("vllm_engine")
    assert engine > SHAPE.total_params * 2  # its own 16-bit weights + its cache
    assert vllm.term("generation_kv") == 0 and vllm.phase("outside allocator") >= engine
    share = 0.3 * gpu.memory_gib * GIB
    assert vllm.total_on(gpu.memory_gib) == pytest.approx(vllm.total - engine + max(engine, share))
    assert vllm.total_on(None) == vllm.total
    # asleep during the training step: vLLM's memory is a generation-phase term, not resident
    asleep = estimate(SHAPE, replace(GRPO, generation="vllm", vllm_sleep=True))
    assert asleep.phase("outside allocator") < vllm.phase("outside allocator")
    assert asleep.total_on(gpu.memory_gib) < vllm.total_on(gpu.memory_gib)
    assert fits(asleep, GPUS["h100"]) and not fits(vllm, GPUS["rtx3060"])


@pytest.mark.parametrize("change, fragment", [
    ({"completion_len": 1024}, "leaves no room for a prompt"),
    ({"generation": "sglang"}, "generation: 'sglang'"),
    ({"vllm_gpu_share": 1.2}, "vllm_gpu_share"),
])
def test_impossible_grpo_setups_are_named(change, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_setup(replace(GRPO, **change))


def test_recipe_settings_reach_the_estimate(tmp_path):
    from lorakit.config import load_recipe
    from lorakit.vram.resolve import setup_from_recipe

    recipe = load_recipe("grpo", None, ["grpo.rewards=[exact_answer]", "grpo.max_completion_length=300",
                                        "grpo.generation=vllm", "grpo.vllm_gpu_memory_utilization=0.4",
                                        "grpo.beta=0.04", "data.max_length=512", "train.micro_batch_size=4",
                                        "train.gradient_accumulation_steps=2"], {"from_run": str(tmp_path)})
    _, setup = setup_from_recipe(recipe)
    assert (setup.stage, setup.seq_len, setup.completion_len, setup.batch_size, setup.grad_accumulation) == \
        ("grpo", 512, 300, 4, 2)
    assert setup.generation == "vllm" and setup.vllm_gpu_share == 0.4 and setup.grpo_reference
    no_parent = load_recipe("grpo", None, ["grpo.rewards=[exact_answer]", "grpo.beta=0.04"])
    assert not setup_from_recipe(no_parent)[1].grpo_reference  # the base with adapters off: no copy


def test_cli_stage_grpo():
    result = runner.invoke(app, ["vram-estimate", "Qwen/Qwen2.5-1.5B", "--stage", "grpo", "--method", "lora",
                                 "--max-length", "768", "--max-completion-length", "512", "--batch-size", "8", "--generation",
                                 "vllm", "--gpu", "rtx4090", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    keys = {t["key"] for t in data["terms"]}
    assert "vllm_engine" in keys and data["setup"]["completion_len"] == 512
    bad = runner.invoke(app, ["vram-estimate", "Qwen/Qwen2.5-1.5B", "--stage", "grpo", "--generation", "tgi"])
    assert bad.exit_code != 0 and "--generation (grpo.generation): 'tgi' is not one of transformers, vllm" in bad.output
