"""Several GPUs: every strategy (DDP, FSDP, ZeRO-2/3) for LoRA, QLoRA under DDP/FSDP/ZeRO-2, DoRA under FSDP, and DPO
with the reference adapter, each a few steps of `lorakit ... --num-processes 2` on the tiny model; the run folder
loads and merges like a one-process run. Skipped without two CUDA GPUs (and ZeRO without DeepSpeed).

None of these ran on the machine lorakit was developed on (no GPU); on the CPU the DDP equivalents run in
tests/integration/test_distributed.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from lorakit.outputs import read_run

from ..conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _two_gpus():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")


def lorakit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lorakit", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=1200)


def sft(out, strategy: str, *overrides: str):
    args = ["sft", "--recipe", "recipes/tiny-cpu-sft.yaml", "-o", str(out), "--max-steps", "6",
            "--num-processes", "2", "--strategy", strategy, "--set", "data.eval=null"]
    for assignment in overrides:
        args += ["--set", assignment]
    return lorakit(*args)


CASES = [("ddp", ()), ("fsdp", ()), ("zero2", ()), ("zero3", ()),
         ("ddp", ("method=qlora",)), ("fsdp", ("method=qlora",)), ("zero2", ("method=qlora",)),
         ("fsdp", ("lora.use_dora=true",)), ("fsdp", ("method=qlora", "lora.use_rslora=true"))]


@pytest.mark.parametrize("strategy,overrides", CASES, ids=[f"{s}-{'-'.join(o) or 'lora'}" for s, o in CASES])
def test_strategy_trains_a_run_that_merges(tmp_path, strategy, overrides):
    if strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    from lorakit.export.merge import merge_run

    out = tmp_path / "sft"
    result = sft(out, strategy, *overrides)
    assert result.returncode == 0, result.stderr
    run = read_run(out)
    assert run.manifest["distributed"] == {"processes": 2, "strategy": strategy, "global_batch_size": 16}
    assert run.manifest["summary"]["final_loss"] < run.manifest["summary"]["first_loss"]
    merged = merge_run(out, tmp_path / "merged")
    assert (merged.path / "config.json").is_file()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_dpo_with_the_reference_adapter(tmp_path, strategy):
    if strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    parent = tmp_path / "sft"
    assert sft(parent, "ddp").returncode == 0
    out = tmp_path / "dpo"
    result = lorakit("dpo", "--recipe", "recipes/tiny-cpu-dpo.yaml", "--from", str(parent), "-o", str(out),
                     "--max-steps", "3", "--num-processes", "2", "--strategy", strategy, "--set", "data.eval=null",
                     "--set", "train.logging_steps=1")
    assert result.returncode == 0, result.stderr
    first = next(r for r in read_run(out).metrics if "loss" in r)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # the reference is the SFT adapter


def test_qlora_under_zero3_is_refused_before_loading(tmp_path):
    result = sft(tmp_path / "sft", "zero3", "method=qlora")
    assert result.returncode == 2 and "zero.Init" in result.stderr and not (tmp_path / "sft").exists()
