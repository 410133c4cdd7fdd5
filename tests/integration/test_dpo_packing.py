"""Padding-free DPO: packed pairs give the padded computation's log-probs, loss, metrics and gradients."""

import json

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from lorakit.outputs import RunFolder, read_run
from lorakit.train.attention import NAME
from lorakit.train.dpo import build_dpo_trainer, run_dpo
from lorakit.train.packed_pairs import make_packed_collator

from ..conftest import REPO, dpo_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def uneven_rows(dataset, count=6):
    """Real pairs made uneven: prompts doubled or cut, completions cut, so the batch is mostly padding."""
    rows = []
    for i in range(count):
        row, other = dict(dataset[i]), dataset[i + 1]
        if i % 3 == 0:
            row["prompt_ids"] = row["prompt_ids"] + other["prompt_ids"] + other["prompt_ids"]
        elif i % 3 == 1:
            row["prompt_ids"] = row["prompt_ids"][3:]
        row["chosen_ids"] = row["chosen_ids"][: max(1, len(row["chosen_ids"]) - 2 * i)]
        rows.append(row)
    return rows


def perturb_policy(model):
    """Move the trainable adapter off the reference, so policy and reference log-probs differ."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_B" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator).to(param.dtype))


def loss_metrics_grads(trainer, batch):
    model = trainer.model
    model.zero_grad()
    trainer._metrics["train"].clear()
    trainer._total_train_tokens = 0
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), metrics, grads


@pytest.mark.parametrize("kind", ["lora-from-sft", "lora-from-sft-fused-head", "qlora-fresh-adapter-sdpa"])
def test_packed_pairs_equal_padded_pairs(kind, sft_run, tmp_path):
    if kind.startswith("lora-from-sft"):  # the reference is the frozen 'ref' copy of the SFT adapter
        # plain head: lorakit's CPU default; fused head: TRL's, what CUDA runs use
        loss = "train.loss=fused" if kind.endswith("fused-head") else "train.loss=plain"
        recipe = dpo_recipe(tmp_path / "x", sft_run.path, "data.eval=null", loss)
        tolerance = 1e-5
    else:  # 4-bit base, the reference is the base with adapters disabled; TRL trains 4-bit adapters in bf16; and
        # transformers' SDPA with its block-diagonal mask instead of lorakit's per-example attention
        recipe = dpo_recipe(tmp_path / "x", None, "data.eval=null", "method=qlora", "model.attn_implementation=sdpa")
        tolerance = 2e-3
    setup = build_dpo_trainer(recipe, RunFolder.open(tmp_path / "x"))
    trainer = setup.trainer
    per_example = not kind.endswith("sdpa")
    assert setup.speed.loss == ("fused" if kind.endswith("fused-head") else "plain")
    assert setup.speed.attention == (NAME if per_example else "sdpa")
    assert setup.speed.reasons["batching"].startswith("padding-free pairs")
    assert not trainer.length_grouped
    rows = uneven_rows(setup.data.train)
    padded = DataCollatorForPreference(pad_token_id=setup.tokenizer.pad_token_id)(rows)
    layouts = {"as trained": trainer.data_collator(rows)}
    # per-example attention trains on one row per batch; several rows with filler slots must be exact under it too
    rows_trained = layouts["as trained"]["packed_index"].shape[0]
    assert rows_trained == 1 if per_example else rows_trained > 1
    if per_example:
        layouts["rows with fillers"] = make_packed_collator(setup.tokenizer.pad_token_id, False, 1.0)(rows)
        assert layouts["rows with fillers"]["packed_index"].shape[0] > 1
    real = int(padded["attention_mask"].sum())
    assert real < 0.7 * padded["attention_mask"].numel()  # the padded batch is mostly padding...

    perturb_policy(trainer.model)
    trainer.model.train()
    loss_d, metrics_d, grads_d = loss_metrics_grads(trainer, padded)
    assert abs(metrics_d["rewards/margins"]) > 1e-3  # the policy really differs from the reference
    with torch.no_grad():
        ref_padded = torch.cat(trainer.compute_ref_log_probs(trainer.model, padded))
    for layout, packed in layouts.items():
        assert torch.equal(packed["input_ids"], padded["input_ids"])
        assert packed["packed_index"].numel() < 0.8 * padded["attention_mask"].numel()  # ...the packed rows are not
        # per-pair reference log-probs (what precompute_ref_log_probs stores) through both layouts
        with torch.no_grad():
            ref_packed = torch.cat(trainer.compute_ref_log_probs(trainer.model, packed))
        torch.testing.assert_close(ref_packed, ref_padded, rtol=tolerance, atol=tolerance * 10)
        loss_p, metrics_p, grads_p = loss_metrics_grads(trainer, packed)
        torch.testing.assert_close(loss_p, loss_d, rtol=tolerance, atol=tolerance)
        assert metrics_p.keys() == metrics_d.keys() >= {"rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                                        "rewards/margins", "logps/chosen", "logps/rejected"}
        for key in metrics_d:
            assert metrics_p[key] == pytest.approx(metrics_d[key], rel=tolerance, abs=tolerance * 10), (layout, key)
        assert grads_p.keys() == grads_d.keys() and len(grads_d) > 0
        for name in grads_d:
            scale = grads_d[name].abs().max().clamp(min=1e-8)
            assert (grads_p[name] - grads_d[name]).abs().max() / scale < tolerance * 10, (layout, name)


@pytest.mark.parametrize("precompute", [False, True])
def test_short_packed_run_from_sft_starts_at_zero_rewards(sft_run, tmp_path, precompute):
    # precomputed: TRL scores the reference inside its constructor, which must already use lorakit's plain head,
    # or the first rewards are the rounding difference of two heads instead of exactly 0
    result = run_dpo(dpo_recipe(tmp_path / "dpo", sft_run.path, "data.eval=null",
                                f"dpo.precompute_ref_log_probs={str(precompute).lower()}", max_steps=4))
    manifest = read_run(result.path).manifest
    assert manifest["speed"]["batching"].startswith("padding-free pairs, one row per batch")
    assert manifest["speed"]["attention"] == NAME and manifest["speed"]["loss"] == "plain"
    assert ("precomputed" in manifest["speed"]["reference"]) is precompute
    first = json.loads((result.path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    assert first["rewards/margins"] == 0.0 and first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0


def test_packed_and_padded_runs_train_alike(sft_run, tmp_path):
    """Same pairs in the same order: a few optimizer steps packed and padded give the same losses and rewards."""
    logs = {}
    for setting in ("auto", "false"):
        out = tmp_path / setting
        setup = build_dpo_trainer(dpo_recipe(out, sft_run.path, "data.eval=null", f"train.padding_free={setting}",
                                             "train.logging_steps=1", max_steps=3), RunFolder.open(out))
        assert setup.speed.reasons["batching"].startswith("padding-free" if setting == "auto" else "padding_free: false")
        setup.trainer.length_grouped = False  # both sides draw the same random batches (seeded)
        setup.trainer.train()
        logs[setting] = [r for r in setup.trainer.state.log_history if "rewards/margins" in r]
    assert len(logs["auto"]) == len(logs["false"]) == 3
    for packed, padded in zip(logs["auto"], logs["false"]):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-5), key
    assert logs["auto"][-1]["rewards/margins"] != 0.0  # the steps really trained
