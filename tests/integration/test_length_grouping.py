"""Without padding-free batches, SFT and DPO trainers group rows by length even on small datasets."""

import pytest

from lorakit.outputs import RunFolder
from lorakit.train.dpo import build_dpo_trainer
from lorakit.train.length_groups import LengthGroupedBatches
from lorakit.train.sft import build_sft_trainer

from ..conftest import REPO, dpo_recipe, sft_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def padding(batches, lengths):
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def test_sft_without_padding_free_groups_its_50_chats(tmp_path):
    recipe = sft_recipe(tmp_path / "sft", "train.padding_free=false", "data.eval=null", "train.seed=3")
    trainer = build_sft_trainer(recipe, RunFolder.open(tmp_path / "sft")).trainer
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedBatches)
    assert sampler.batch_size == recipe.train.micro_batch_size and sampler.seed == 3
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    # the batches the trainer's data loader really yields
    batches = [[int(i) for i in b] for b in trainer.get_train_dataloader().batch_sampler]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    shuffled = [list(range(i, min(i + 8, len(lengths)))) for i in range(0, len(lengths), 8)]  # file order
    assert padding(batches, lengths) < 0.7 * padding(shuffled, lengths)


def test_dpo_without_padding_free_groups_its_pairs(tmp_path):
    recipe = dpo_recipe(tmp_path / "dpo", None, "train.padding_free=false", "data.eval=null")
    setup = build_dpo_trainer(recipe, RunFolder.open(tmp_path / "dpo"))
    assert setup.speed.reasons["batching"] == "padding_free: false in the recipe; length-grouped pairs"
    sampler = setup.trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedBatches) and sampler.batch_size == recipe.train.micro_batch_size
    data = setup.trainer.train_dataset
    assert sampler.lengths == [len(p) + max(len(c), len(r)) for p, c, r in
                               zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
