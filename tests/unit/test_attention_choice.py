"""Which models get per-example attention, and how packed rows are cut into sequences (no model)."""

import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from lorakit.train.attention import eligibility, packed_segments


def config(cls, attention="sdpa", **kwargs):
    made = cls(**kwargs)
    made._attn_implementation = attention
    return made


def test_only_full_causal_sdpa_models_are_eligible():
    assert eligibility(config(LlamaConfig)) is None
    assert eligibility(config(Qwen2Config)) is None  # layer_types all full_attention unless use_sliding_window
    assert eligibility(config(LlamaConfig, attention="eager")) == "eager attention"
    assert eligibility(config(LlamaConfig, attention="flash_attention_2")) == "flash_attention_2 attention"
    assert "sliding" in eligibility(config(MistralConfig, sliding_window=4096))
    assert "sliding" in eligibility(config(Qwen2Config, use_sliding_window=True, sliding_window=64,
                                           max_window_layers=0))


def test_sequences_come_from_the_collator_boundaries_or_the_position_resets():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    bounds = torch.tensor([0, 3, 5, 6, 10], dtype=torch.int32)
    assert packed_segments(positions, None, 1, 10) == [[3, 2, 1, 4]]
    assert packed_segments(None, bounds, 1, 10) == [[3, 2, 1, 4]]
    rows = torch.tensor([[0, 1, 2, 3, 0, 1], [0, 1, 0, 1, 2, 0]])
    assert packed_segments(rows, None, 2, 6) == [[4, 2], [2, 3, 1]]
    # nothing packed: a plain row, or one sequence per row of a batch
    assert packed_segments(torch.arange(6)[None], None, 1, 6) is None
    assert packed_segments(torch.arange(6)[None], None, 3, 6) is None
    assert packed_segments(None, None, 1, 6) is None
