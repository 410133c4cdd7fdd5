"""On CUDA: Liger's kernels when liger-kernel is installed, torch.compile when asked, and packed rows on flash-attn
(when installed) or lorakit's per-example SDPA; each recorded in the manifest. Skipped without a CUDA GPU."""

import json

import pytest

from ..conftest import REPO, sft_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def speed_of(result):
    return json.loads((result.path / "manifest.json").read_text())["speed"]


def test_liger_runs_when_installed(tmp_path):
    pytest.importorskip("liger_kernel", reason="pip install liger-kernel")
    from lorakit.train.sft import run_sft

    speed = speed_of(run_sft(sft_recipe(tmp_path / "liger", "train.liger=true", max_steps=3)))
    assert speed["liger"] is True and "Liger" in speed["why"]["liger"]


def test_compile_runs_and_trains(tmp_path):
    from lorakit.train.sft import run_sft

    result = run_sft(sft_recipe(tmp_path / "compiled", "train.compile=true", max_steps=3))
    assert speed_of(result)["compile"] is True
    assert result.summary["final_loss"] < result.summary["first_loss"]


def test_packed_rows_run_on_a_per_sequence_kernel(tmp_path):
    from lorakit.train.attention import NAME
    from lorakit.train.sft import run_sft
    from lorakit.train.speed import has_flash_attention

    speed = speed_of(run_sft(sft_recipe(tmp_path / "attention", max_steps=3)))
    assert speed["padding_free"] is True
    assert speed["attention"] == ("flash_attention_2" if has_flash_attention() else NAME)
