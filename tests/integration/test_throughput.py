"""Padding-free batches are exact, masks survive packing, accumulation is exact, env reports the choices, and the
throughput bench (bench/throughput.py) compares sides that train on the same tokens and compute the same loss."""

import importlib.util
import json
from argparse import Namespace

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.data.tokenize import IGNORE
from lorakit.outputs import RunFolder
from lorakit.train.sft import build_sft_trainer, run_sft

from ..conftest import REPO, sft_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def setup_for(tmp_path, padding_free, loss="auto"):
    recipe = sft_recipe(tmp_path / f"run-{padding_free}-{loss}", f"train.padding_free={str(padding_free).lower()}",
                        f"train.loss={loss}", "data.eval=null")
    return build_sft_trainer(recipe, RunFolder.open(recipe.output_dir))


def examples(setup, n=6):
    data = setup.data.for_trainer(setup.data.train)
    return [{"input_ids": data[i]["input_ids"], "labels": data[i]["labels"]} for i in range(n)]


@pytest.mark.parametrize("loss", ["plain", "fused"])
def test_packed_loss_equals_the_examples_run_one_by_one(tmp_path, loss):
    packed_setup = setup_for(tmp_path, True, loss)
    padded_setup = setup_for(tmp_path, False, loss)
    assert packed_setup.speed.padding_free and not padded_setup.speed.padding_free
    batch = examples(packed_setup)
    trainer = packed_setup.trainer
    model = trainer.model
    model.eval()
    with torch.no_grad():
        packed_inputs = trainer.data_collator(batch)
        assert packed_inputs["input_ids"].shape[0] == 1 and "attention_mask" not in packed_inputs
        trained = sum(sum(1 for label in e["labels"][1:] if label != IGNORE) for e in batch)
        packed = trainer.compute_loss(model, packed_inputs, num_items_in_batch=trained)
        # One by one through the padded trainer's collator, weighted by trained tokens (the loss is a token mean).
        total = 0.0
        for example in batch:
            inputs = padded_setup.trainer.data_collator([example])
            count = sum(1 for label in example["labels"][1:] if label != IGNORE)
            total += padded_setup.trainer.compute_loss(model, inputs, num_items_in_batch=count).item() * count
    assert packed.item() == pytest.approx(total / trained, rel=1e-5)


def test_completion_masks_survive_packing(tmp_path):
    setup = setup_for(tmp_path, True)
    batch = examples(setup)
    labels = setup.trainer.data_collator(batch)["labels"][0].tolist()
    offset = 0
    for example in batch:
        got = labels[offset: offset + len(example["labels"])]
        assert got[0] == IGNORE  # nothing predicts an example's first token
        assert got[1:] == example["labels"][1:]  # user tokens stay masked, assistant tokens and EOS stay trained
        offset += len(example["labels"])


def adapter_after_one_step(tmp_path, name, micro_batch, accumulation):
    recipe = sft_recipe(tmp_path / name, "data.eval=null", "train.optim=sgd", "train.warmup_ratio=0.0",
                        f"train.micro_batch_size={micro_batch}", f"train.gradient_accumulation_steps={accumulation}",
                        "train.lr_scheduler_type=constant", "data.max_rows=8", max_steps=1, learning_rate=0.5)
    run_sft(recipe)
    return load_file(str(tmp_path / name / "adapter_model.safetensors"))


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    # SGD, so the update is the gradient itself: Adam's first step would hide differences behind its sign.
    one_by_four = adapter_after_one_step(tmp_path, "mb1", 1, 4)
    four_by_one = adapter_after_one_step(tmp_path, "mb4", 4, 1)
    moved = 0.0
    for key, value in four_by_one.items():
        assert torch.allclose(one_by_four[key], value, atol=1e-6, rtol=1e-4), key
        moved = max(moved, value.abs().max().item())
    assert moved > 0


def test_env_reports_the_choices_a_run_makes(sft_run):
    result = CliRunner().invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["chosen"]
    manifest = json.loads((sft_run.path / "manifest.json").read_text())
    # What lorakit should choose here: the plain CE head and fp32 on a CPU; the fused head and bf16 (fp16 on GPUs
    # without bf16) on CUDA.
    cuda = torch.cuda.is_available()
    expected_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    assert chosen["loss"].split()[0] == manifest["speed"]["loss"] == ("fused" if cuda else "plain")
    assert chosen["precision"] == manifest["precision"] == expected_precision
    assert manifest["speed"]["padding_free"] is True


def test_micro_batch_one_neither_packs_nor_groups(tmp_path):
    recipe = sft_recipe(tmp_path / "mb1", "train.micro_batch_size=1", "data.eval=null", max_steps=1)
    setup = build_sft_trainer(recipe, RunFolder.open(tmp_path / "mb1"))
    assert not setup.speed.padding_free and not setup.speed.group_by_length
    assert "micro-batch 1" in setup.speed.reasons["batching"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", REPO / "bench" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_args(tiny_llama, tmp_path, **changes):
    """The bench on tiny settings, learning rate ~0 (lorakit refuses 0): each loss is the base model's on its batch."""
    args = dict(model=str(tiny_llama), rows=12, batch=4, epochs=1, repeats=1, seed=0, pack_length=512,
                packed_batch=None, learning_rate=1e-12, max_words=40, gradient_checkpointing=True, stage="both",
                sides=None, profile=False, workdir=str(tmp_path / "bench"), json=True)
    args.update(changes)
    return Namespace(**args)


def tolerance():
    # fp32 on the CPU: the sides differ only in summation order; bf16 on CUDA rounds every matmul
    return 2e-2 if torch.cuda.is_available() else 1e-4


def token_weighted_loss(runs):
    return runs[0]["token_mean_loss"]


def test_bench_sides_train_the_same_tokens_and_compute_the_same_loss(tiny_llama, tmp_path):
    bench = load_bench()
    report = bench.run_bench(bench_args(tiny_llama, tmp_path,
                                        sides="lorakit,lorakit-sdpa,trl,trl-padding-free,trl-bfd"))
    sft, dpo = report["sft_runs"], report["dpo_runs"]
    assert set(sft) == {"lorakit", "lorakit-sdpa", "trl", "trl-padding-free", "trl-bfd"}
    assert set(dpo) == {"lorakit", "lorakit-sdpa", "trl"}
    for stage in (sft, dpo):  # lorakit runs its packed rows with per-example attention; the ablation does not
        assert stage["lorakit"][0]["attention"] == "lorakit_sdpa_varlen" and stage["lorakit-sdpa"][0]["attention"] == "sdpa"
    for stage in (sft, dpo):
        trained = {name: runs[0]["tokens"]["trained"] for name, runs in stage.items()}
        assert len(set(trained.values())) == 1 and min(trained.values()) > 0, trained
        for runs in stage.values():  # the counts come from the batches the trainer really saw
            assert runs[0]["micro_batches"] == runs[0]["steps"] > 0
            assert sum(b["trained"] for b in runs[0]["batches"]) == runs[0]["tokens"]["trained"]
            assert runs[0]["gradient_checkpointing_layers"] > 0
    # Padding-free and packed rows carry no padding; TRL's defaults pad every row to the longest of its batch.
    assert sft["lorakit"][0]["padding_fraction"] == sft["trl-padding-free"][0]["padding_fraction"] == 0
    assert sft["trl"][0]["padding_fraction"] > 0
    # Learning rate ~0: the token-weighted loss over the epoch is the base model's per-token loss on the data, whatever
    # the batching; a side whose packed examples saw each other, or that trained other tokens, would differ (this
    # covers lorakit's per-example attention against the block-diagonal mask of the lorakit-sdpa ablation too).
    reference = token_weighted_loss(sft["trl"])
    for name, runs in sft.items():
        assert token_weighted_loss(runs) == pytest.approx(reference, rel=tolerance()), name
    # DPO: policy == reference at learning rate ~0, so the loss is log 2; the summed log-probabilities of the chosen
    # and rejected completions, averaged over the same pairs, must agree between lorakit and TRL.
    for key in ("logps_chosen", "logps_rejected"):
        for side in ("lorakit", "lorakit-sdpa"):
            lorakit, trl = (sum(dpo[name][0][key]) / len(dpo[name][0][key]) for name in (side, "trl"))
            assert lorakit == pytest.approx(trl, rel=tolerance()), (side, key)
    for runs in dpo.values():
        assert runs[0]["token_mean_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert {"sft_lorakit_over_best_peer", "dpo_lorakit_over_best_peer"} <= set(report)


def test_bench_llamafactory_side_trains_the_same_tokens(tiny_llama, tmp_path):
    bench = load_bench()
    if bench.llamafactory_python() is None:
        pytest.skip(f"LLaMA-Factory is not installed in {bench.LLAMAFACTORY_VENV} (bash bench/setup_llamafactory.sh)")
    report = bench.run_bench(bench_args(tiny_llama, tmp_path, sides="lorakit,llamafactory"))
    for stage in ("sft", "dpo"):
        runs = report[f"{stage}_runs"]
        assert runs["llamafactory"][0]["tokens"]["trained"] == runs["lorakit"][0]["tokens"]["trained"] > 0
        assert runs["llamafactory"][0]["gradient_checkpointing_layers"] > 0  # like for like with the others
        assert token_weighted_loss(runs["llamafactory"]) == pytest.approx(token_weighted_loss(runs["lorakit"]),
                                                                          rel=tolerance()), stage
    dpo = report["dpo_runs"]
    for key in ("logps_chosen", "logps_rejected"):
        lorakit, peer = (sum(dpo[name][0][key]) / len(dpo[name][0][key]) for name in ("lorakit", "llamafactory"))
        assert peer == pytest.approx(lorakit, rel=tolerance()), key
    sft = report["sft_runs"]["llamafactory"][0]
    assert sft["batches"][0]["row_length"] >= 512  # neat_packing rows of cutoff_len
