"""Length-grouped batches: similar lengths share a batch at any dataset size, in an order fixed by seed and epoch."""

import random

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from lorakit.train.length_groups import LengthGroupedBatches, grouped_sampler


def uneven_lengths(rows: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [int(20 * 20 ** rng.random()) for _ in range(rows)]  # log-uniform 20..400, like chat data


def padding_fraction(order: list[int], lengths: list[int], batch: int) -> float:
    padded = real = 0
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start:start + batch]]
        padded += max(chunk) * len(chunk)
        real += sum(chunk)
    return 1 - real / padded


@pytest.mark.parametrize("rows", [1, 5, 8, 13, 44, 63, 200, 1001])
def test_every_row_once_and_only_the_last_batch_short(rows):
    lengths = uneven_lengths(rows)
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(rows)) and len(sampler) == rows
    sizes = [len(b) for b in sampler.batches()]
    assert all(size == 8 for size in sizes[:-1]) and 0 < sizes[-1] <= 8
    # the longest row is in the first batch, so running out of memory happens at step 1
    assert max(lengths) in [lengths[i] for i in order[:8]]


@pytest.mark.parametrize("rows", [16, 44, 48, 63, 200])
def test_groups_where_transformers_sampler_does_not(rows):
    lengths = uneven_lengths(rows, seed=rows)
    ours = padding_fraction(list(LengthGroupedBatches(lengths, 8, seed=0)), lengths, 8)
    shuffled = padding_fraction(torch.randperm(rows, generator=torch.Generator().manual_seed(0)).tolist(), lengths, 8)
    theirs = padding_fraction(list(LengthGroupedSampler(8, lengths=lengths,
                                                        generator=torch.Generator().manual_seed(0))), lengths, 8)
    assert ours < 0.85 * min(shuffled, theirs)
    if 32 < rows < 64:  # transformers' mega-batch is one batch here: its batches are as padded as random ones
        assert abs(theirs - shuffled) < 0.05 and ours < 0.3 < 0.5 < theirs


def test_order_depends_on_seed_and_epoch_only():
    lengths = uneven_lengths(100)
    a, b = LengthGroupedBatches(lengths, 4, seed=7), LengthGroupedBatches(lengths, 4, seed=7)
    torch.manual_seed(123)
    random.seed(5)
    first = list(a)
    torch.manual_seed(999)  # the global RNGs (which training moves) play no part: a resumed run sees the same order
    random.seed(6)
    assert list(b) == first == list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)  # a new epoch regroups with new noise
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthGroupedBatches(lengths, 4, seed=8)) != first


def test_equal_lengths_are_batched_at_random():
    # the noise breaks ties: equal-length rows do not always land in the same batches
    sampler = LengthGroupedBatches([25] * 40, 8, seed=0)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append({frozenset(b) for b in sampler.batches()})
    assert epochs[0] != epochs[1] != epochs[2]


def test_grouped_sampler_uses_micro_batches_and_the_data_seed():
    class Args:
        train_batch_size = 4  # what one forward pads; accumulation steps do not matter
        gradient_accumulation_steps = 8
        data_seed = 0
        seed = 42

    sampler = grouped_sampler(Args(), uneven_lengths(30))
    assert sampler.batch_size == 4 and sampler.seed == 0
    Args.data_seed = None
    assert grouped_sampler(Args(), [1, 2]).seed == 42
