"""Micro-batches by tokens (lorakit.train.token_batches): the optimizer step the recipe states in examples, run as
forward passes of at most a token budget, trains what accumulation over single examples trains."""

import pytest
import torch

from lorakit.outputs import RunFolder, read_run
from lorakit.train.sft import build_sft_trainer

from ..conftest import REPO, sft_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def two_steps(tmp_path, name, *overrides):
    # SGD at a constant rate: the update is the gradient itself, so any difference in the loss scaling shows
    recipe = sft_recipe(tmp_path / name, "data.eval=null", "train.optim=sgd", "train.warmup_ratio=0.0",
                        "train.lr_scheduler_type=constant", "data.max_rows=8", "data.max_length=48",
                        "train.micro_batch_size=1", "train.gradient_accumulation_steps=4", "train.logging_steps=1",
                        *overrides, max_steps=2, learning_rate=0.5)
    setup = build_sft_trainer(recipe, RunFolder.open(tmp_path / name))
    setup.trainer.train()
    adapter = {name: p.detach().clone() for name, p in setup.trainer.model.named_parameters() if p.requires_grad}
    losses = [entry["loss"] for entry in setup.trainer.state.log_history if "loss" in entry]
    return adapter, setup.speed, losses, setup.trainer.lorakit_passes


def test_token_budget_trains_what_accumulation_trains(tmp_path, capfd):
    accumulated, classic, classic_losses, _ = two_steps(tmp_path, "accumulated", "train.micro_batch_tokens=null")
    capfd.readouterr()
    split, several, split_losses, split_passes = two_steps(tmp_path, "split", "train.micro_batch_tokens=64")
    said = capfd.readouterr().err
    # the run's first lines say how it batches and what it chose for long sequences
    assert "Batch: 4 examples per optimizer step, in forward passes of up to 64 tokens" in said
    assert "Long sequences: tiled MLP off (" in said
    assert classic.micro_batch_tokens is None and not classic.padding_free
    # the step's 4 examples (~30 tokens each) in passes of at most 64 tokens: more than one pass, fewer than 4
    assert several.micro_batch_tokens == 64 and several.padding_free and 1 < max(split_passes) < 4
    moved = 0.0
    for key, value in accumulated.items():
        assert torch.allclose(split[key], value, atol=1e-6, rtol=1e-4), key
        moved = max(moved, value.abs().max().item())
    assert moved > 0
    assert split_losses == pytest.approx(classic_losses, rel=1e-5)


def test_manifest_and_env_report_the_long_sequence_choices(sft_run):
    import json

    from typer.testing import CliRunner

    from lorakit.cli import app

    written = json.loads((sft_run.path / "manifest.json").read_text())["long_sequences"]
    assert {"tiled_mlp", "tile_tokens", "kbit_upcast", "micro_batch_tokens"} <= set(written)
    assert written["kbit_upcast"] is None  # a LoRA run has no 4-bit base
    assert written["micro_batch_tokens"] and {"tiled_mlp", "micro_batch_tokens"} <= set(written["why"])
    record = read_run(sft_run.path).manifest.long_sequences  # typed, as lorakit reads it back
    assert record.micro_batch_tokens == written["micro_batch_tokens"] and record.tiled_mlp is written["tiled_mlp"]
    chosen = json.loads(CliRunner().invoke(app, ["env", "--json"]).stdout)["chosen"]
    assert {"tiled MLP", "4-bit base (qlora)", "micro-batches"} <= set(chosen)
