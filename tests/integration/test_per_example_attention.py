"""lorakit's per-example attention (lorakit.train.attention): packed rows give the padded batch's logits and
gradients, everything that is not a packed row is transformers' SDPA unchanged, and training curves do not move."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorakit.outputs import RunFolder
from lorakit.train.attention import NAME, register, switch_attention
from lorakit.train.sft import build_sft_trainer

from ..conftest import REPO, sft_recipe

LENGTHS = [7, 13, 1, 20, 4, 9]  # uneven, with a one-token sequence


def load(path, per_example: bool):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    if per_example:
        register()
        assert switch_attention(model, NAME)
    return model


def sequences(vocab_size):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab_size, (n,), generator=generator) for n in LENGTHS]


def logits_and_grads(model, **inputs):
    model.zero_grad()
    logits = model(**inputs, use_cache=False).logits
    return logits, lambda picked: (picked.pow(2).mean().backward(),
                                   {n: p.grad.clone() for n, p in model.named_parameters()})[1]


def padded_reference(model, seqs):
    width = max(LENGTHS)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    logits, grads = logits_and_grads(model, input_ids=ids, attention_mask=mask)
    picked = torch.cat([logits[i, :n] for i, n in enumerate(LENGTHS)])
    return picked.detach(), grads(picked)


def packed_rows(seqs, rows):
    """`rows` lists which sequences share a row; shorter rows end with filler tokens of their own positions."""
    width = max(sum(LENGTHS[i] for i in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros_like(ids)
    places = {}
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            ids[r, start:start + LENGTHS[i]] = seqs[i]
            positions[r, start:start + LENGTHS[i]] = torch.arange(LENGTHS[i])
            places[i] = (r, start)
            start += LENGTHS[i]
        positions[r, start:] = torch.arange(width - start)
    return ids, positions, places


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("layout", ["one-row-with-boundaries", "one-row-positions-only", "rows-with-fillers"])
def test_packed_rows_give_the_padded_logits_and_gradients(arch, layout, request):
    path = request.getfixturevalue(arch)
    model = load(path, per_example=True)
    seqs = sequences(model.config.vocab_size)
    reference, reference_grads = padded_reference(load(path, per_example=False), seqs)
    rows = [[0, 1, 2], [3, 4], [5]] if layout == "rows-with-fillers" else [list(range(len(seqs)))]
    ids, positions, places = packed_rows(seqs, rows)
    inputs = dict(input_ids=ids, position_ids=positions)
    if layout == "one-row-with-boundaries":  # what TRL's padding-free collator sends
        bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
        inputs.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS))
    logits, grads = logits_and_grads(model, **inputs)
    picked = torch.cat([logits[places[i][0], places[i][1]:places[i][1] + n] for i, n in enumerate(LENGTHS)])
    torch.testing.assert_close(picked.detach(), reference, rtol=1e-5, atol=1e-5)
    got = grads(picked)
    assert got.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert ((got[name] - grad).abs().max() / scale) < 1e-4, name


def test_what_is_not_a_packed_row_is_transformers_sdpa(tiny_llama):
    sdpa, per_example = load(tiny_llama, False), load(tiny_llama, True)
    seqs = sequences(sdpa.config.vocab_size)
    ids = torch.stack([seqs[3][:9], seqs[5]])
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded batch
    with torch.no_grad():
        assert torch.equal(sdpa(input_ids=ids, attention_mask=mask).logits,
                           per_example(input_ids=ids, attention_mask=mask).logits)
        assert torch.equal(sdpa(input_ids=ids[:1]).logits, per_example(input_ids=ids[:1]).logits)
    generate = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(sdpa.generate(ids[:1], **generate), per_example.generate(ids[:1], **generate))


@pytest.mark.slow
def test_sft_picks_per_example_attention_and_trains_as_under_the_mask(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    logs = {}
    for setting in ("auto", "sdpa"):
        recipe = sft_recipe(tmp_path / setting, f"model.attn_implementation={setting}", "data.eval=null",
                            "train.logging_steps=1", max_steps=4)
        setup = build_sft_trainer(recipe, RunFolder.open(recipe.output_dir))
        assert setup.speed.padding_free
        assert setup.speed.attention == (NAME if setting == "auto" else "sdpa")
        assert setup.speed.to_manifest()["attention"] == setup.speed.attention
        setup.trainer.train()
        logs[setting] = [r["loss"] for r in setup.trainer.state.log_history if "loss" in r]
    assert len(logs["auto"]) == 4
    assert logs["auto"] == pytest.approx(logs["sdpa"], rel=1e-5)
    assert logs["auto"][-1] < logs["auto"][0]  # it trained
