"""Which tokens stop a model is a value computed from its tokenizer and its generation config, never something a
tokenizer carries: the same folder gives the same stops whichever loader made the tokenizer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from lorakit.chat_template import Stops, read_stops
from lorakit.errors import DataError
from lorakit.export.modelfile import modelfile
from lorakit.model import ModelSource, load_tokenizer

from .. import families as fam

LLAMA_31_EOS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")  # Llama 3.1 Instruct's generation_config.json


def llama_31_folder(tmp_path):
    """A Llama-3.1-style tokenizer folder whose generation_config.json lists three eos ids."""
    family = fam.BY_NAME["Llama 3.1"]
    tokenizer = fam.dress_tokenizer(fam.tiny_tokenizer(), family)
    tokenizer.save_pretrained(tmp_path)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in LLAMA_31_EOS]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    return tmp_path, ids


def test_the_same_folder_gives_the_same_stops_whichever_loader_made_the_tokenizer(tmp_path):
    folder, ids = llama_31_folder(tmp_path)
    plain = AutoTokenizer.from_pretrained(folder)
    lorakit_loaded = load_tokenizer(ModelSource(str(folder), str(folder), True))
    stops = read_stops(plain, folder)
    assert stops == read_stops(lorakit_loaded, folder)
    assert stops.require().token == "<|eot_id|>" and stops.ids[0] == plain.convert_tokens_to_ids("<|eot_id|>")
    assert set(ids) <= set(stops.ids)
    # the tokenizer alone knows its template's end-of-turn token and its EOS, not the model's whole list
    alone = Stops.of(plain)
    assert plain.convert_tokens_to_ids("<|end_of_text|>") not in alone.ids


def test_modelfile_stops_on_every_eos_of_the_generation_config(tmp_path):
    folder, _ = llama_31_folder(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text, _ = modelfile("model.gguf", None, None, tokenizer, read_stops(tokenizer, folder))
    stops = [line.split(" ", 2)[2].strip('"') for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops[0] == "<|eot_id|>" and set(LLAMA_31_EOS) <= set(stops)


def test_a_template_without_a_stop_token_is_refused_only_where_one_is_needed():
    tokenizer = fam.tiny_tokenizer()
    tokenizer.chat_template = fam.template_text(fam.BY_NAME["Llama 3.1"])  # <|eot_id|> is not in this vocabulary
    stops = Stops.of(tokenizer)
    assert stops.convention is None and stops.end_of_turn is None
    assert stops.ids == [tokenizer.eos_token_id]  # generation still stops at EOS
    with pytest.raises(DataError) as info:  # what stop_convention says, with its hint
        stops.require()
    assert "'<|eot_id|>" in info.value.message and info.value.hint
