"""The long-context planner: tiles where they pay, the max-context answer, token budgets (pure arithmetic)."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.train.token_batches import choose_token_budget, group_examples, split_row, wants_token_budget
from lorakit.vram.catalog import GPUS, find_model
from lorakit.vram.context import max_context
from lorakit.vram.estimate import GIB, Setup, estimate, lorakit_defaults, mlp_tile_tokens, tiling_pays
from lorakit.vram.plan import max_seq_len

runner = CliRunner()


def test_tiles_pay_only_for_memory_and_only_for_long_rows():
    shape = find_model("Llama-3.1-8B")
    long = lorakit_defaults(method="qlora", seq_len=65536)
    assert mlp_tile_tokens(shape.hidden) == 4096
    assert not tiling_pays(shape, replace(long, seq_len=4096))[0]  # one tile: nothing to cut
    assert not tiling_pays(shape, replace(long, grad_checkpointing=False))[0]
    assert not tiling_pays(shape, replace(long, stage="inference"))[0]
    # on a GPU that holds the run untiled, tiles would only cost a recompute; on one that does not, they are on
    assert not tiling_pays(shape, replace(long, seq_len=8192), 24 * GIB)[0]
    pays, why = tiling_pays(shape, long, 24 * GIB)
    assert pays and "does not fit" in why
    # without a GPU to fit (the CPU), when one recomputed layer is the largest activation term
    offloaded = replace(long, activation_offloading=True)
    assert tiling_pays(shape, offloaded)[0]
    assert not tiling_pays(shape, replace(long, upcast_non_quantized="all"))[0]  # fp32 layer inputs dominate
    # a mixture of experts has no dense MLP to tile
    assert not tiling_pays(find_model("Mixtral-8x7B-v0.1"), long)[0]


def test_tiles_and_the_compute_dtype_lengthen_the_longest_sequence():
    shape, gpu = find_model("Llama-3.1-8B"), GPUS["rtx4090"]
    usual = Setup(method="qlora", lora_r=32, lora_dropout=0.0)  # PEFT's fp32 upcast, no tiles
    lorakit = lorakit_defaults(method="qlora", lora_r=32, lora_dropout=0.0)
    before, after = max_seq_len(shape, usual, gpu), max_seq_len(shape, lorakit, gpu)
    assert after > 2 * before
    # the goal on paper: Unsloth's published 78,475 tokens on 24 GB, with activation offloading
    offloaded = max_seq_len(shape, replace(lorakit, activation_offloading=True), gpu)
    assert offloaded >= 78_000
    at_max = estimate(shape, replace(lorakit, activation_offloading=True, seq_len=offloaded, tiled_mlp=True))
    assert at_max.total <= gpu.memory_gib * GIB < estimate(shape, replace(at_max.setup, seq_len=offloaded + 128)).total


def test_the_usual_hugging_face_setup_lands_on_the_published_hf_fa2_figures():
    """Unsloth's benchmark page lists Hugging Face + FA2 at 5,789 tokens (24 GB) and 2,551 (16 GB) for Llama 3.1 8B
    QLoRA r=32: the planner's row for that set-up (PEFT's fp32 upcast, the loss over the full logits, checkpointing)
    lands within 5 %."""
    shape = find_model("Llama-3.1-8B")
    for gpu, published in (("rtx4090", 5_789), ("rtx4080", 2_551)):
        rows = {row.option.key: row for row in max_context(shape, lorakit_defaults(method="qlora", lora_r=32),
                                                          GPUS[gpu])}
        assert rows["hf_usual"].max_seq_len == pytest.approx(published, rel=0.05)
        assert rows["defaults"].max_seq_len > rows["no_tiles"].max_seq_len > rows["fp32_upcast"].max_seq_len
        assert rows["offloading_no_dropout"].max_seq_len > rows["offloading"].max_seq_len > rows["defaults"].max_seq_len


def test_cli_max_context_answers_per_option():
    result = runner.invoke(app, ["vram-estimate", "meta-llama/Llama-3.1-8B", "--method", "qlora", "--max-context",
                                 "--gpu", "rtx4090", "--lora-r", "32", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["option"]: row for row in json.loads(result.stdout)["max_context"][0]["rows"]}
    assert rows["offloading"]["max_seq_len"] >= 78_000 and rows["offloading"]["recipe"].startswith("train.")
    assert rows["defaults"]["max_seq_len"] > rows["fp32_upcast"]["max_seq_len"]
    table = runner.invoke(app, ["vram-estimate", "Qwen/Qwen2.5-7B", "--max-context", "--gpu", "rtx4080",
                                "--activation-offloading"])
    assert table.exit_code == 0 and "Longest trainable sequence" in table.output and "already set" in table.output
    refused = runner.invoke(app, ["vram-estimate", "Qwen/Qwen2.5-7B", "--max-context"])
    assert refused.exit_code == 2 and "--gpu" in refused.output
    # the recipe words, one spelling each
    fp32 = json.loads(runner.invoke(app, ["vram-estimate", "Llama-3.1-8B", "--method", "qlora", "--upcast-to-fp32",
                                               "--json"]).stdout)
    plain = json.loads(runner.invoke(app, ["vram-estimate", "Llama-3.1-8B", "--method", "qlora", "--json"]).stdout)
    assert fp32["setup"]["upcast_non_quantized"] == "all" and fp32["total_gib"] > plain["total_gib"]


def test_token_budget_is_the_planners_and_never_below_one_example():
    assert choose_token_budget("auto", 2048, 8, "cpu") == (8192, "cpu: 8,192 tokens per pass")
    assert choose_token_budget("auto", 256, 8, "cpu")[0] == 2048  # a whole step's examples at their longest
    assert choose_token_budget("auto", 2048, 8, "cuda", fit_tokens=12000)[0] == 12000
    assert choose_token_budget("auto", 2048, 8, "cuda", fit_tokens=1000)[0] == 2048  # one example must fit
    assert choose_token_budget(512, 1024, 8, "cpu")[0] == 1024


class _Train:
    def __init__(self, micro=1, accumulation=8, tokens="auto"):
        self.micro_batch_size, self.gradient_accumulation_steps, self.micro_batch_tokens = micro, accumulation, tokens


def test_token_budget_applies_to_one_process_and_several_examples_per_step():
    assert wants_token_budget(_Train(), 1)[0]
    assert not wants_token_budget(_Train(tokens=None), 1)[0]
    assert not wants_token_budget(_Train(), 2)[0]
    assert not wants_token_budget(_Train(accumulation=1), 1)[0]


def test_a_padding_free_row_is_cut_at_example_boundaries():
    import torch

    lengths = [5, 7, 3, 9, 2]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.arange(int(position_ids.shape[1]))[None]
    bounds = torch.tensor([0, 5, 12, 15, 24, 26], dtype=torch.int32)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": position_ids, "cu_seq_lens_q": bounds,
             "cu_seq_lens_k": bounds, "max_length_q": 9, "max_length_k": 9}
    assert group_examples([0, 5, 12, 15, 24, 26], 12) == [(0, 12), (12, 24), (24, 26)]
    assert group_examples([0, 5, 12, 15, 24, 26], 4) == [(0, 5), (5, 12), (12, 15), (15, 24), (24, 26)]
    parts = split_row(batch, 12)
    assert [p["input_ids"].shape[1] for p in parts] == [12, 12, 2]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts], dim=1), ids)
    assert parts[1]["cu_seq_lens_q"].tolist() == [0, 3, 12] and parts[1]["max_length_q"] == 9
    assert parts[1]["position_ids"][0, 0] == 0 and parts[2]["max_length_k"] == 2
    assert split_row(batch, 100) == [batch]
    assert split_row({**batch, "attention_mask": ids}, 12) is None  # a padded batch is not cut
