"""lorakit's faster GRPO sampling (merged LoRA weights, one prefill per group) is exact: the same tokens as PEFT's
unmerged generate, and the base weights afterwards are the very tensors they were."""

from __future__ import annotations

import pytest
import torch

from lorakit.config import LoraSection
from lorakit.train.grpo_generation import fast_generation_plan, group_size


@pytest.fixture
def policy(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():  # a trained-looking adapter: B is zero at init, which would make merging trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def grouped_inputs(k: int):
    """Two prompts of different lengths, left-padded, each repeated k times (TRL's order)."""
    prompts = [[5, 17, 42, 99, 7], [8, 3, 11]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts for _ in range(k)])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts for _ in range(k)])
    return ids, mask


def test_group_size_reads_trls_repeated_rows():
    ids, mask = grouped_inputs(4)
    assert group_size(ids, mask) == 4
    assert group_size(ids[:6], mask[:6]) == 1  # groups of 4 and 2: not uniform, no sharing
    assert group_size(ids[:1], mask[:1]) == 1


def test_merged_generation_with_shared_prefill_gives_the_same_tokens(policy):
    ids, mask = grouped_inputs(3)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                  eos_token_id=None)
    policy.eval()
    with torch.no_grad():
        expected = policy.generate(**kwargs)
    base_weights = {n: p for n, p in policy.named_parameters() if "lora_" not in n}
    before = {n: p.detach().clone() for n, p in base_weights.items()}
    plan = fast_generation_plan(policy, "cpu", "lora", LoraSection(dropout=0.0))
    assert plan.merge and plan.share_prefill
    assert plan.apply() == "merged LoRA weights, one prefill per group"
    with torch.no_grad():
        got = policy.generate(**kwargs)
    assert torch.equal(got, expected)
    for name, param in policy.named_parameters():  # the same tensors, bit for bit
        if "lora_" not in name:
            assert torch.equal(param, before[name]), name
    # and sampling draws the same tokens from the same random state
    torch.manual_seed(1)
    sampled = policy.generate(**{**kwargs, "do_sample": True, "temperature": 1.0})
    policy.generate = type(policy).generate.__get__(policy)  # the unwrapped method
    torch.manual_seed(1)
    assert torch.equal(policy.generate(**{**kwargs, "do_sample": True, "temperature": 1.0}), sampled)


@pytest.mark.parametrize("method, lora, expected", [
    ("qlora", LoraSection(), "4-bit base"),
    ("lora", LoraSection(use_dora=True), "DoRA"),
    ("lora", LoraSection(modules_to_save=["lm_head"]), "modules_to_save"),
])
def test_no_merge_where_a_weight_swap_is_not_exact(policy, method, lora, expected):
    plan = fast_generation_plan(policy, "cpu", method, lora)
    assert not plan.merge and plan.share_prefill and expected in plan.reasons[0]
    assert fast_generation_plan(policy, "cuda", "lora", LoraSection()).describe() is None


def test_cache_keyword_guard(policy):
    """lorakit.compat.cache_keyword: the installed transformers takes a KV cache under the name it returns (the
    shared prefill passes it to forward and generate)."""
    import inspect

    from lorakit.compat import cache_keyword

    name = cache_keyword(policy)
    assert name in ("cache", "past_key_values")
    assert name in inspect.signature(policy.get_base_model().forward).parameters
