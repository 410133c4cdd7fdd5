"""GRPO scores completions at its sampling temperature: lorakit's plain LM head divides the logits by it exactly as
TRL's fused head does (log-probs, entropy and the gradient of the hidden states), streamed and full alike."""

import pytest
import torch

from lorakit.train import plain_head


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6])
def test_streamed_and_full_heads_divide_by_the_temperature(monkeypatch, temperature):
    monkeypatch.setattr(plain_head, "CHUNK_ELEMENTS", 5 * 97)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=False).requires_grad_(False)
    targets = torch.randint(0, 97, (29,))
    hidden = torch.randn(29, 16)
    upstream = torch.randn(29)
    # what TRL computes: log_softmax(logits / T)
    reference_hidden = hidden.clone().requires_grad_(True)
    logits = head(reference_hidden) / temperature
    expected = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    (expected * upstream).sum().backward()
    expected_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).detach()
    for score in (plain_head.head_log_probs, plain_head.full_logits_log_probs):
        h = hidden.clone().requires_grad_(True)
        picked, entropy, *_ = score(h, head, targets, False, temperature)
        (picked * upstream).sum().backward()
        torch.testing.assert_close(picked.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(entropy, expected_entropy, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h.grad, reference_hidden.grad, rtol=1e-5, atol=1e-5)


def test_plain_head_matches_trls_fused_head_at_a_temperature(tiny_llama):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 12))
    labels = ids.clone()
    labels[:, :6] = -100  # only the completion is scored, as GRPO does
    results = []
    for plain in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
        add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
        if plain:
            assert plain_head.use_plain_lm_head(model, temperature=0.7)
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        results.append((out.log_probs, out.entropy))
    for fused, plain in zip(*results):
        torch.testing.assert_close(plain, fused, rtol=1e-4, atol=1e-4)
