"""On a CUDA GPU a run takes the GPU defaults: bf16, the fused LM head, paged 8-bit AdamW for QLoRA, measured peaks."""

import json

import pytest

from ..conftest import REPO, sft_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gpu_run_uses_bf16_fused_head_and_logs_measured_peaks(tmp_path, method):
    import torch

    from lorakit.train.sft import run_sft

    result = run_sft(sft_recipe(tmp_path / method, f"method={method}", max_steps=6))
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["device"] == "cuda"
    assert manifest["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert manifest["speed"]["loss"] == "fused"
    assert manifest["optimizer"] == ("paged_adamw_8bit" if method == "qlora" else "adamw_torch")
    lines = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["cuda_max_allocated_gib"] for r in lines if "cuda_max_allocated_gib" in r]
    assert peaks and all(p > 0 for p in peaks)
    assert all(r["estimate_total_gib"] > 0 for r in lines if "estimate_total_gib" in r)
    assert result.summary["final_loss"] < result.summary["first_loss"]
