"""GRPO in the chain: `lorakit run` with sft -> grpo -> merge, the GRPO run's folder consumed by merge and
serve-info, the held-out reward eval of base, each stage and the merged model, and a pipeline whose reward file does
not load failing before its first stage trains."""

from __future__ import annotations

import json

import pytest

from lorakit.config import load_recipe
from lorakit.pipeline import Pipeline

from ..conftest import EXAMPLES, REPO
from ..helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow

RECIPE = REPO / "recipes" / "tiny-cpu-pipeline.yaml"
HELD_OUT = EXAMPLES / "grpo-capitals-test.jsonl"


def grpo_pipeline(root, *overrides):
    return load_recipe("pipeline", RECIPE, [
        f"root={root}", "stages=[sft, grpo, merge]", "sft.train.max_steps=40", "merge.dtype=float32",
        f"grpo={{data: {{train: {EXAMPLES / 'grpo-capitals.jsonl'}, max_length: 64}}, "
        "grpo: {rewards: [exact_answer], num_generations: 4, max_completion_length: 12}, "
        "train: {max_steps: 2, micro_batch_size: 8, learning_rate: 1.0e-3, gradient_checkpointing: false}}",
        *overrides])


@pytest.fixture(scope="module")
def grpo_root(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("grpo-pipeline") / "tiny"
    old = os.getcwd()
    os.chdir(REPO)
    try:
        result = Pipeline(grpo_pipeline(root)).run()
    finally:
        os.chdir(old)
    assert result.failure is None, result.failure
    assert {o.stage: o.status for o in result.outcomes} == {"sft": "ran", "grpo": "ran", "merge": "ran"}
    return root


def test_grpo_continues_the_sft_stage_and_merge_takes_it(grpo_root):
    grpo = json.loads((grpo_root / "grpo" / "manifest.json").read_text())
    assert grpo["stage"] == "grpo" and grpo["parent"]["path"] == str((grpo_root / "sft").resolve())
    merged = json.loads((grpo_root / "merged" / "manifest.json").read_text())
    assert merged["source"] == str((grpo_root / "grpo").resolve())
    assert [step["stage"] for step in merged["lineage"]][:2] == ["grpo", "sft"]
    info = invoke("serve-info", grpo_root / "grpo", "--json")
    assert info.exit_code == 0, info.output
    assert "vllm" in info.output
    page = (grpo_root / "grpo" / "report.html").read_text()
    assert "GRPO reward" in page and "GRPO completion length" in page and "GRPO rewards per function" in page


def test_eval_scores_held_out_rewards_of_every_stage(grpo_root):
    result = invoke("eval", grpo_root / "grpo", grpo_root / "merged", "--prompts", HELD_OUT, "--reward",
                    "exact_answer", "--samples", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    kinds = {c["kind"]: c for c in report["candidates"]}
    assert set(kinds) == {"base", "sft", "grpo", "merged"}  # the GRPO run's SFT parent is added
    for candidate in kinds.values():
        for key in ("reward", "pass", "reward/exact_answer", "reward_sampled", "pass@2"):
            assert 0.0 <= candidate[key] <= 1.0, (candidate["kind"], key)
    # the merged model is the GRPO policy: the same greedy replies, so the same greedy reward
    assert kinds["merged"]["reward"] == pytest.approx(kinds["grpo"]["reward"])
    compared = {(r["metric"]) for r in report["regressions"]}
    assert {"reward", "pass", "reward_sampled", "pass@2"} <= compared
    # without --reward, the GRPO run lends its own rewards
    again = invoke("eval", grpo_root / "grpo", "--prompts", HELD_OUT, "--no-base", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{"):])["rewards"]["rewards"] == ["exact_answer"]


def test_a_broken_reward_file_fails_the_pipeline_before_sft(tmp_path):
    bad = tmp_path / "rewards.py"
    bad.write_text("def score(completions, **kwargs)\n    return []\n")
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(RECIPE.read_text())
    result = invoke("run", recipe, "--set", f"root={tmp_path / 'out'}", "--set", "stages=[sft, grpo, merge]",
                    "--set", f"grpo={{data: {{train: {EXAMPLES / 'grpo-capitals.jsonl'}}}}}",
                    "--set", f"grpo.grpo.rewards=[{bad}:score]", "--set", f"sft.data.train={EXAMPLES / 'chat-messages.jsonl'}",
                    "--set", f"sft.data.eval={EXAMPLES / 'chat-messages-test.jsonl'}")
    assert_clean_error(result, "rewards.py line 1")
    assert not (tmp_path / "out" / "sft").exists()
