"""Real DPO runs on the bundled tiny model, continuing from a real SFT run."""

import json

import pytest
import torch
from transformers import TrainerCallback

from lorakit.errors import ConfigError, RunError
from lorakit.outputs import RunFolder, read_run
from lorakit.train.dpo import build_dpo_trainer, run_dpo
from lorakit.train.sft import run_sft

from ..conftest import REPO, dpo_recipe, sft_recipe
from ..helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


class KeepPolicyLogits(TrainerCallback):
    """Remembers the trained policy's logits on a fixed input, to compare with the saved adapter."""

    def __init__(self):
        self.input_ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
        self.logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=self.input_ids.to(model.device)).logits.cpu()


@pytest.fixture(scope="module")
def dpo_run(sft_run, tmp_path_factory):
    import os

    keep = KeepPolicyLogits()
    out = tmp_path_factory.mktemp("dpo") / "dpo"
    old = os.getcwd()
    os.chdir(REPO)
    try:
        result = run_dpo(dpo_recipe(out, sft_run.path, "data.eval=null", max_steps=40), callbacks=[keep])
    finally:
        os.chdir(old)
    return result, keep


def test_reference_is_the_sft_model_not_the_base(sft_run, tmp_path):
    setup = build_dpo_trainer(dpo_recipe(tmp_path / "x", sft_run.path), RunFolder.open(tmp_path / "x"))
    trainer = setup.trainer
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    batch = trainer.data_collator([setup.data.train[i] for i in range(4)])
    with torch.no_grad():
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, batch)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        policy = model(**inputs, labels=labels, fused_lm_head=True).log_probs.sum(1)
        with model.disable_adapter():
            base = model(**inputs, labels=labels, fused_lm_head=True).log_probs.sum(1)
    reference = torch.cat([ref_chosen, ref_rejected])
    assert torch.allclose(policy, reference, atol=1e-4)  # before any update: policy == reference
    assert (reference - base).abs().min() > 1.0  # and the reference is the SFT model, far from the raw base


def test_first_update_starts_from_zero_rewards(dpo_run):
    result, _ = dpo_run
    first = json.loads((result.path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference
    assert first["rewards/margins"] == 0.0 and first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0


def test_rewards_and_margins_rise(dpo_run):
    result, _ = dpo_run
    records = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "rewards/accuracies" in r]
    first, last = train[0], train[-1]
    assert last["rewards/accuracies"] >= 0.9 > first["rewards/accuracies"] + 0.3
    assert last["rewards/margins"] > first["rewards/margins"] + 0.5
    gap = lambda r: r["logps/chosen"] - r["logps/rejected"]  # noqa: E731
    assert gap(last) > gap(first) + 0.5


def test_saved_adapter_is_the_policy_and_applies_to_the_base(dpo_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, keep = dpo_run
    assert not (result.path / "ref").exists()
    run = read_run(result.path, expect_stage=("dpo",))
    base = AutoModelForCausalLM.from_pretrained(run.base_model)
    model = PeftModel.from_pretrained(base, str(result.path)).eval()
    with torch.no_grad():
        logits = model(input_ids=keep.input_ids).logits
    assert torch.allclose(logits, keep.logits, atol=1e-5)


def test_dpo_changed_the_adapter_and_not_the_base(dpo_run, sft_run):
    import os

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from .test_sft_training import assert_base_unchanged

    result, _ = dpo_run
    base_dir = read_run(result.path).base_model
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      str(result.path))
    assert_base_unchanged(model, load_file(os.path.join(base_dir, "model.safetensors")))
    sft, dpo = (load_file(str(path / "adapter_model.safetensors")) for path in (sft_run.path, result.path))
    assert sft.keys() == dpo.keys() and sft
    changed = [k for k in sft if not torch.equal(sft[k], dpo[k])]
    assert len(changed) == len(sft), f"DPO left {len(sft) - len(changed)} of {len(sft)} adapter tensors unchanged"


def test_manifest_records_the_parent(dpo_run, sft_run):
    result, _ = dpo_run
    manifest = read_run(result.path).manifest
    assert manifest["stage"] == "dpo"
    assert manifest["parent"]["path"] == str(sft_run.path.resolve())
    assert manifest["parent"]["stage"] == "sft"
    assert read_run(result.path).recipe.lora == read_run(sft_run.path).recipe.lora


def test_without_from_the_reference_is_the_base_with_adapters_disabled(tmp_path):
    setup = build_dpo_trainer(
        dpo_recipe(tmp_path / "x", None), RunFolder.open(tmp_path / "x"))
    assert set(setup.trainer.model.peft_config) == {"default"}
    assert setup.trainer.ref_model is None
    assert "base model" in setup.speed.reference


def test_precomputed_reference_log_probs_train_the_same_way(sft_run, tmp_path):
    result = run_dpo(dpo_recipe(tmp_path / "pre", sft_run.path, "data.eval=null", "dpo.precompute_ref_log_probs=true",
                                max_steps=30))
    assert "log-probs precomputed" in read_run(result.path).manifest["speed"]["reference"]
    train = [r for r in map(json.loads, (result.path / "metrics.jsonl").read_text().splitlines())
             if "rewards/margins" in r]
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)  # the reference is still the SFT model
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"] + 0.5


def test_qlora_dpo_from_a_qlora_sft_run(tmp_path):
    sft = run_sft(sft_recipe(tmp_path / "sft", "method=qlora", "data.eval=null", max_steps=30))
    result = run_dpo(dpo_recipe(tmp_path / "dpo", sft.path, "data.eval=null", max_steps=6))
    assert read_run(result.path).recipe.method == "qlora"
    assert result.summary["steps"] == 6
    # TRL trains 4-bit adapters in bf16; the reference copy computes in bf16 too, so both start equal
    first = json.loads((result.path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/margins"] == 0.0 and first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0


def test_dpo_recipe_may_not_contradict_its_sft_run(sft_run, tmp_path):
    with pytest.raises(ConfigError, match="sets lora"):
        run_dpo(dpo_recipe(tmp_path / "dpo", sft_run.path, "lora.r=4"))


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_from_run(tmp_path):
    result = invoke("dpo", "--from", tmp_path / "nope", "--data", REPO / "examples/data/prefs.jsonl",
                    "--output-dir", tmp_path / "out")
    assert_clean_error(result, "run folder")
    assert not (tmp_path / "out").exists()


def test_from_a_folder_that_is_not_an_sft_run(tmp_path, dpo_run):
    result, _ = dpo_run
    out = invoke("dpo", "--from", result.path, "--data", REPO / "examples/data/prefs.jsonl",
                 "--output-dir", tmp_path / "out")
    assert_clean_error(out, "is a 'dpo' run, expected sft")
    (tmp_path / "plain").mkdir()
    out = invoke("dpo", "--from", tmp_path / "plain", "--output-dir", tmp_path / "out")
    assert_clean_error(out, "is not a lorakit run folder")


def test_missing_columns_and_identical_pairs(tmp_path, sft_run):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "answer": "a"}) + "\n")
    assert_clean_error(invoke("dpo", "--from", sft_run.path, "--data", bad, "--output-dir", tmp_path / "o"),
                 "cannot tell the data format")
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "q", "chosen": "x", "rejected": "x"}) + "\n")
    assert_clean_error(invoke("dpo", "--from", sft_run.path, "--data", same, "--output-dir", tmp_path / "o"),
                 "row 2: chosen and rejected are identical")
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()


def test_finished_dpo_run_is_not_overwritten(dpo_run, sft_run):
    result, _ = dpo_run
    with pytest.raises(RunError, match="already exists"):
        run_dpo(dpo_recipe(result.path, sft_run.path))
