"""The packed layout of padding-free DPO: every real token once, positions restarting per sequence, sensible rows."""

import torch
from transformers import LlamaConfig

from lorakit.train.packed_pairs import attention_weight_of, pack_rows, packed_layout


def test_layout_places_every_token_once():
    lengths, width = [9, 4, 6, 12, 1], 12
    index, positions = packed_layout(lengths, width, one_row=False, attention_weight=1.0)  # rows of the longest
    filler = len(lengths) * width
    real = index[index != filler]
    expected = torch.tensor([i * width + j for i, n in enumerate(lengths) for j in range(n)])
    assert torch.equal(real.sort().values, expected)
    assert index.shape[1] == max(lengths) and index.shape[0] < len(lengths)
    assert torch.equal(positions[index != filler], real % width)  # positions restart at 0 for each sequence
    # filler slots (row ends) count from 0 again: a sequence of their own, which no real token attends to
    for row_index, row_positions in zip(index, positions):
        tail = row_index == filler
        if tail.any():
            assert torch.equal(row_positions[tail], torch.arange(int(tail.sum())))
    one_index, one_positions = packed_layout(lengths, width, one_row=True)
    assert one_index.shape == (1, sum(lengths)) and (one_index != filler).all()


def test_row_width_follows_the_cost_of_attention():
    uneven = [300, 40, 35, 250, 60, 20, 120, 90]
    assert len(pack_rows(uneven, one_row=False, attention_weight=0.0)) == 1  # attention free: one row, no filler
    narrow = pack_rows(uneven, one_row=False, attention_weight=1.0)  # attention dear: rows of the longest
    assert all(sum(uneven[i] for i in row) <= max(uneven) for row in narrow) and len(narrow) < len(uneven)
    assert sorted(i for row in narrow for i in row) == list(range(len(uneven)))
    # equal lengths carry no padding: one sequence per row costs no more slots and the least attention
    assert len(pack_rows([25] * 16, one_row=False, attention_weight=1e-3)) == 16
    # nearly equal ones: a little filler, never more slots than padding would have cost
    near = [23, 27, 25, 26, 24, 27, 25, 23]
    rows = pack_rows(near, one_row=False, attention_weight=1e-3)
    assert len(rows) * max(sum(near[i] for i in row) for row in rows) <= len(near) * max(near)
    assert pack_rows(uneven, one_row=True, attention_weight=1.0) == [list(range(len(uneven)))]


def test_attention_weight_of_a_llama():
    config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=4)
    # parameters per layer: q and o (8 heads of 64), k and v (4 heads of 64), a gated MLP (3 matrices)
    linear = 2 * 512 * 64 * (8 + 4) + 3 * 512 * 1376
    assert attention_weight_of(config) == 4 * 512 / (2 * linear)
