"""train.keep: best and early stopping on a run built to overfit (the tiny model memorizes 50 chats at a high learning
rate, so its loss on the held-out chats falls, then rises): the run keeps the adapter of the step with the lowest eval
loss, rotation never deletes that checkpoint, early stopping ends the run, and an interrupted run resumes to the same
kept step and adapter."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from lorakit.errors import RunInterrupted
from lorakit.train.keep import eval_turn, overfit_warning
from lorakit.train.sft import run_sft

from ..conftest import REPO, sft_recipe
from .test_sft_training import CtrlCAt

pytestmark = pytest.mark.slow

# Evaluate every 4 steps, keep one checkpoint besides the best, stop after 3 evaluations without a new best.
OVERFIT = ("train.keep=best", "train.eval_steps=4", "train.save_total_limit=1", "train.early_stopping_patience=3",
           "train.logging_steps=4")


def eval_losses(run_path):
    return {m["step"]: m["eval_loss"] for m in map(json.loads, open(run_path / "metrics.jsonl")) if "eval_loss" in m}


def same_adapter(a, b) -> bool:
    left, right = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    return left.keys() == right.keys() and all((left[k] == right[k]).all() for k in left)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    import os

    out = tmp_path_factory.mktemp("keep") / "best"
    old = os.getcwd()
    os.chdir(REPO)
    try:
        return run_sft(sft_recipe(out, *OVERFIT, max_steps=80))
    finally:
        os.chdir(old)


def test_the_run_keeps_the_step_with_the_lowest_eval_loss(overfit_run):
    losses = eval_losses(overfit_run.path)
    best = min(losses, key=losses.get)
    last = max(losses)
    assert losses[last] > losses[best]  # it did overfit: held-out loss turned up after its minimum
    manifest = json.loads((overfit_run.path / "manifest.json").read_text())
    kept = manifest["kept"]
    assert kept["policy"] == "best" and kept["step"] == best and kept["metric"] == "eval_loss"
    assert kept["value"] == pytest.approx(losses[best]) and str(best) in kept["why"]
    assert overfit_run.summary["kept_step"] == best == overfit_run.summary["eval_loss_min_step"]
    # early stopping: three evaluations without a new minimum, well before max_steps
    assert kept["stopped_early"] and last == best + 3 * 4 and overfit_run.summary["steps"] == last < 80
    # the run's adapter is that checkpoint's, which rotation (save_total_limit=1) kept while deleting later ones
    checkpoints = sorted(p.name for p in (overfit_run.path / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{best}"]
    assert same_adapter(overfit_run.path, overfit_run.path / "checkpoints" / checkpoints[0])
    page = (overfit_run.path / "report.html").read_text()
    assert f'eval loss lowest, then rises at step {best}"' in page and f'kept (best) at step {best}"' in page


def test_an_interrupted_run_resumes_to_the_same_kept_step(overfit_run, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    best = overfit_run.summary["kept_step"]
    out = tmp_path / "interrupted"
    stop_at = best + 5  # after the best step was saved, before early stopping ends the run
    with pytest.raises(RunInterrupted):
        run_sft(sft_recipe(out, *OVERFIT, max_steps=80), callbacks=[CtrlCAt(stop_at)])
    resumed = run_sft(sft_recipe(out, *OVERFIT, max_steps=80), resume=True)
    assert resumed.summary["kept_step"] == best and resumed.summary["steps"] == overfit_run.summary["steps"]
    assert same_adapter(resumed.path, overfit_run.path)


def test_keeping_the_last_step_past_the_turn_warns():
    records = [{"step": 10, "eval_loss": 3.0}, {"step": 20, "eval_loss": 2.5}, {"step": 30, "eval_loss": 2.9}]
    turn = eval_turn(records)
    assert turn["min_step"] == 20 and turn["rise"] == pytest.approx(0.16)
    warning = overfit_warning(turn, {"policy": "last", "step": 30})
    assert "16% above its minimum (2.5000 at step 20)" in warning and "train.keep: best" in warning
    assert overfit_warning(turn, {"policy": "best", "step": 20}) is None
    assert overfit_warning(eval_turn(records[:2] + [{"step": 30, "eval_loss": 2.7}]), {"policy": "last"}) is None
