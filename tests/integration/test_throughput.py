"""Padding-free batches are exact, masks survive packing, accumulation is exact, and env reports the choices."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.data.tokenize import IGNORE
from lorakit.runs import RunFolder
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
    assert chosen["loss"].split()[0] == manifest["speed"]["loss"] == "plain"
    assert chosen["precision"] == manifest["precision"] == "fp32"
    assert manifest["speed"]["padding_free"] is True


def test_micro_batch_one_neither_packs_nor_groups(tmp_path):
    recipe = sft_recipe(tmp_path / "mb1", "train.micro_batch_size=1", "data.eval=null", max_steps=1)
    setup = build_sft_trainer(recipe, RunFolder.open(tmp_path / "mb1"))
    assert not setup.speed.padding_free and not setup.speed.group_by_length
    assert "micro-batch 1" in setup.speed.reasons["batching"]
