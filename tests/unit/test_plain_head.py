"""lorakit's streamed LM head (frozen head, chunked, gradient computed in forward) equals autograd through the full
logits: log-probs, metrics and the gradient of the hidden states."""

import pytest
import torch

from lorakit.train import plain_head


@pytest.mark.parametrize("bias", [False, True])
def test_streamed_head_equals_full_logits(monkeypatch, bias):
    monkeypatch.setattr(plain_head, "CHUNK_ELEMENTS", 7 * 301)  # several uneven chunks of 16 rows
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 301, bias=bias).requires_grad_(False)
    targets = torch.randint(0, 301, (53,))
    hidden = torch.randn(53, 24, dtype=torch.float64).float()
    upstream = torch.randn(53)  # any per-token weights (DPO weighs chosen and rejected tokens differently)
    results = {}
    for name, score in (("streamed", plain_head.head_log_probs), ("full", plain_head.full_logits_log_probs)):
        h = hidden.clone().requires_grad_(True)
        outputs = score(h, head, targets, True)
        (outputs[0] * upstream).sum().backward()
        results[name] = (*[o.detach() for o in outputs], h.grad)
    for streamed, full in zip(results["streamed"], results["full"]):
        if streamed.dtype == torch.bool:
            assert torch.equal(streamed, full)
        else:
            torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)
    assert results["streamed"][-1].abs().max() > 0


def test_streamed_head_without_grad_skips_the_gradient_and_the_weighting_field():
    head = torch.nn.Linear(8, 50, bias=False).requires_grad_(False)
    hidden, targets = torch.randn(5, 8), torch.randint(0, 50, (5,))
    with torch.no_grad():
        picked, entropy, mean_logits, is_top1, log_sum_sq = plain_head.head_log_probs(hidden, head, targets)
    expected = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(picked, expected)
    assert torch.equal(log_sum_sq, torch.zeros(5))  # not asked for: TRL reads it only for WPO weighting


def test_a_trained_head_goes_through_autograd():
    trained = torch.nn.Linear(8, 50)
    assert not plain_head.frozen_linear(trained)
    assert plain_head.frozen_linear(torch.nn.Linear(8, 50).requires_grad_(False))
