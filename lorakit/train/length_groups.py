"""Batches of similar length at any dataset size, in an order fixed by the seed and the epoch.

transformers' `LengthGroupedSampler` sorts random mega-batches of `mult x batch` rows with
`mult = min(rows // (4 x batch), 50)`: under 8 x batch rows (64 pairs at a batch of 8) a mega-batch is one batch, so
nothing is grouped and a batch of uneven chats stays mostly padding. Here every row's length gets a little
multiplicative noise (AllenNLP's `padding_noise`, 10 %), the whole dataset is sorted by it and cut into batches, and
the batches are shuffled: neighbours in length share a batch at any size, and the noise varies who they are from one
epoch to the next. The batch holding the longest row goes first (an out-of-memory shows at step 1, as in
transformers), the one short batch (when the batch size does not divide the rows) last, where the data loader cuts it.

The order depends only on (seed, epoch), never on the global RNG: the Trainer calls `set_epoch` before each epoch, so
a resumed run sees the interrupted epoch's order again and skips exactly the batches it already trained.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

from torch.utils.data import Sampler

from lorakit.compat import check_trainer_hooks

NOISE = 0.1


class LengthGroupedBatches(Sampler[int]):
    """Row indices, `batch_size` consecutive ones per batch of similar length."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, noise: float = NOISE):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.noise = noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        keys = [n * (1 + self.noise * rng.uniform(-1, 1)) for n in self.lengths]
        order = sorted(range(len(keys)), key=lambda i: -keys[i])
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
        return batches + ([short] if short else [])

    def __iter__(self) -> Iterator[int]:
        return iter([i for batch in self.batches() for i in batch])


def grouped_sampler(args, lengths: Sequence[int]) -> LengthGroupedBatches:
    """The sampler for a Trainer's training arguments: micro-batches (what gets padded), the run's data seed."""
    seed = args.data_seed if args.data_seed is not None else args.seed
    return LengthGroupedBatches(lengths, args.train_batch_size, seed)


def row_lengths(dataset) -> list[int]:
    """An SFT row's length: the `length` column lorakit writes, else the token count."""
    if "length" in dataset.column_names:
        return list(dataset["length"])
    return [len(ids) for ids in dataset["input_ids"]]


def length_grouped(trainer_cls):
    """`trainer_cls` whose `train_sampling_strategy="group_by_length"` groups at any dataset size (see above)."""

    class LengthGrouped(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or not hasattr(dataset, "column_names"):
                return super()._get_train_sampler(train_dataset)
            return grouped_sampler(self.args, row_lengths(dataset))

    LengthGrouped.__name__ = LengthGrouped.__qualname__ = f"LengthGrouped{trainer_cls.__name__}"
    check_trainer_hooks(LengthGrouped)
    return LengthGrouped
