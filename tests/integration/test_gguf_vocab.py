"""The BOS flag of an exported GGUF says what training saw (no training: the tiny model with a chat template)."""

import importlib.util
import shutil

from lorakit.chat_template import CHATML

from .test_quantize import gguf_fields

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def export_with_template(tiny_llama, tmp_path, template):
    from transformers import AutoTokenizer

    from lorakit.export.gguf_export import write_gguf

    folder = tmp_path / "merged"
    shutil.copytree(tiny_llama, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    result = write_gguf(folder, tmp_path / "model.gguf", "q8_0", tokenizer)
    return tokenizer, result


def trained_prompt(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_chatml_model_whose_tokenizer_adds_bos_gets_no_bos_from_llama_cpp(tiny_llama, tmp_path):
    tokenizer, result = export_with_template(tiny_llama, tmp_path, CHATML)
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer would add one...
    text, ids = trained_prompt(tokenizer)
    assert ids[0] != tokenizer.bos_token_id  # ...but training renders chats without it
    _, fields = gguf_fields(result.path)
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert fields["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    if HAS_LLAMA_CPP:  # llama-server tokenizes a rendered chat with the model's BOS flag
        from llama_cpp import Llama

        llama = Llama(model_path=str(result.path), vocab_only=True, verbose=False)
        assert llama.tokenize(text.encode(), add_bos=True, special=True) == ids
        llama.close()


def test_a_template_that_writes_bos_keeps_the_flag(tiny_llama, tmp_path):
    tokenizer, result = export_with_template(tiny_llama, tmp_path, "{{ bos_token }}" + CHATML)
    _, ids = trained_prompt(tokenizer)
    assert ids[0] == tokenizer.bos_token_id
    _, fields = gguf_fields(result.path)
    assert fields["tokenizer.ggml.add_bos_token"] is True
