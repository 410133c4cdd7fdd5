"""A Llama-3.1-style model (its generation_config.json lists <|end_of_text|>, <|eom_id|> and <|eot_id|>) exported
as GGUF: the Ollama Modelfile stops on all three, and serve-info names the same three ids."""

from __future__ import annotations

import json

import pytest

from lorakit.export.quantize import run_quantize
from lorakit.export.serve_info import serve_info

from ..unit.test_stops import LLAMA_31_EOS, llama_31_folder

pytestmark = pytest.mark.slow  # writes and reads a (tiny) GGUF


def test_modelfile_and_serve_info_stop_on_every_eos_of_a_llama_31_model(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, ids = llama_31_folder(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=ids)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))  # as the release lists it

    run_quantize(folder, "gguf", "f16", tmp_path / "export", verify=False)
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    stops = [line.split(" ", 2)[2].strip('"') for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops[0] == "<|eot_id|>" and set(LLAMA_31_EOS) <= set(stops)

    served = serve_info([tmp_path / "export"])
    assert set(served["artifact"]["eos_token_id"]) == set(ids)
    assert set(tokenizer.convert_ids_to_tokens(served["artifact"]["eos_token_id"])) <= set(stops)
