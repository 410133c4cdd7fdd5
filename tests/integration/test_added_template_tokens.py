"""A base model whose vocabulary has no family's turn tokens (like GPT-2 or Pythia) trains with ChatML's tokens added:
their embedding and output rows are trained beside the LoRA adapter, and the run merges, generates and says how to
serve it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lorakit.config import load_recipe
from lorakit.train.sft import run_sft

from ..conftest import EXAMPLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory):
    """A tiny Llama whose byte-level BPE vocabulary has only <|endoftext|> as a special token, and no template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lorakit.tiny import TinySpec, build_model, corpus_lines

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_lines(), trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("models") / "plain-base"
    model = build_model(TinySpec(hidden_size=64, intermediate_size=176, num_hidden_layers=2), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_added_turn_tokens_train_merge_and_serve(plain_base, tmp_path):
    from lorakit.export.merge import merge_run
    from lorakit.export.serve_info import serve_info
    from lorakit.infer import generate_reply, load_for_inference

    recipe = load_recipe("sft", None, [f"model.name_or_path={plain_base}", f"data.train={EXAMPLES / 'chat-messages.jsonl'}",
                                       "train.max_steps=12", "train.micro_batch_size=8",
                                       "train.gradient_accumulation_steps=1", "train.learning_rate=3.0e-3",
                                       "train.gradient_checkpointing=false", "data.max_length=128"],
                         {"output_dir": str(tmp_path / "run")})
    run = run_sft(recipe)
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["chat_template"]["name"] == "chatml+added"
    assert manifest["chat_template"]["added_tokens"] == ["<|im_start|>", "<|im_end|>"]
    config = json.loads((run.path / "adapter_config.json").read_text())
    new_ids = [600, 601]
    assert config["trainable_token_indices"] == {"embed_tokens": new_ids, "lm_head": new_ids}
    weights = load_file(run.path / "adapter_model.safetensors")
    rows = {k: v for k, v in weights.items() if "trainable_tokens" in k}
    assert len(rows) == 2 and all(v.shape[0] == 2 and torch.isfinite(v).all() for v in rows.values())
    # trained: the rows moved away from where they started (the mean of the base's rows)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(plain_base)
    start = base.get_input_embeddings().weight.mean(0)
    embed = next(v for k, v in rows.items() if "embed_tokens" in k)
    assert (embed - start).abs().max() > 1e-3

    merged = merge_run(run.path, tmp_path / "merged", "float32", "dequantized", "2GB", False, None, True)
    merged_config = json.loads((merged.path / "config.json").read_text())
    assert merged_config["vocab_size"] == 602
    loaded, tokenizer = load_for_inference(run.path, None)  # the adapter over a base grown to 602 rows
    reply = generate_reply(loaded, tokenizer, [{"role": "user", "content": "What is 2 plus 3?"}], 8, 0.0)
    assert isinstance(reply, str) and "<|im_start|>" not in reply
    notes = " ".join(serve_info([run.path], None)["notes"])
    assert "added <|im_start|>, <|im_end|>" in notes and "lorakit merge" in notes
