"""Real released vocabularies through lorakit's GGUF import and export, checked against llama.cpp itself.

Each vocabulary (llama.cpp's ggml-vocab-*.gguf, the tokenizers of Llama 3, Llama 2/Mistral, Qwen2, Phi-3, Gemma)
gets a tiny random model of its family with a real chat template, exported to GGUF f16 by lorakit. Then:
- the tokenizer lorakit unpacks from the vocabulary file cuts llama.cpp's own test texts (.inp) into llama.cpp's ids
  (.out), as does the exported file read back;
- llama.cpp (when installed) tokenizes the test texts and rendered chats of the export exactly as training did,
  renders the embedded chat template into the prompt training saw, puts no BOS in front that training never saw,
  stops at the end-of-turn token, and predicts what the transformers model predicts.
"""

from __future__ import annotations

import pytest

from tests.real import artifacts
from tests.real.conftest import needs_llama_cpp
from tests.real.vocabs import VOCABS, build_vocab_model, vectors

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Hi there,  how are\nyou? Café, naïve, 日本語, 2024!"},
     {"role": "assistant", "content": "Fine, thanks: 3.14 and\n\n  indented."},
     {"role": "user", "content": "And 12+30?"}, {"role": "assistant", "content": "42"}],
]
IDS = [vocab.name for vocab in VOCABS]


@pytest.fixture(scope="module", params=VOCABS, ids=IDS)
def exported(request, models_dir, tmp_path_factory):
    """(vocab, model folder with its tokenizer, the f16 GGUF lorakit wrote of it)."""
    from transformers import AutoTokenizer

    from lorakit.export.gguf_export import write_gguf

    vocab = request.param
    # a neutral folder name: llama.cpp keys some tokenizer behaviour on the model's name (see gguf_vocab)
    folder = build_vocab_model(vocab, tmp_path_factory.mktemp("vocab") / "merged")
    result = write_gguf(folder, folder / "model-f16.gguf", "f16", AutoTokenizer.from_pretrained(folder))
    return vocab, folder, result


def mismatches(encode, pairs):
    return [(text, want, got) for text, want in pairs if (got := encode(text)) != want]


@pytest.mark.parametrize("name", IDS)
def test_the_unpacked_vocabulary_cuts_llama_cpps_test_texts_into_its_ids(models_dir, name):
    tokenizer = artifacts.vocab_tokenizer(name)
    pairs = vectors(name)
    assert len(pairs) > 30
    wrong = mismatches(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], pairs)
    assert not wrong, f"{len(wrong)}/{len(pairs)} differ, first {wrong[0]}"


def test_the_export_read_back_cuts_the_test_texts_into_the_same_ids(exported, tmp_path):
    from lorakit.gguf_source import import_tokenizer

    vocab, folder, result = exported
    tokenizer, _ = import_tokenizer(result.path, tmp_path)
    wrong = mismatches(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], vectors(vocab.name))
    assert not wrong, wrong[:1]


@pytest.fixture(scope="module")
def llama(exported):
    needs_llama_cpp()
    from llama_cpp import Llama

    model = Llama(model_path=str(exported[2].path), n_ctx=512, logits_all=True, verbose=False)
    yield model
    model.close()


def test_llama_cpp_tokenizes_test_texts_and_chats_of_the_export_as_training_did(exported, llama):
    from transformers import AutoTokenizer

    vocab, folder, _ = exported
    wrong = mismatches(lambda text: llama.tokenize(text.encode(), add_bos=False, special=False), vectors(vocab.name))
    assert not wrong, wrong[:1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for chat in CHATS:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        assert llama.tokenize(text.encode(), add_bos=False, special=True) == \
            tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_llama_cpp_prompts_with_the_embedded_template_and_no_bos_training_never_saw(exported, llama):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    _, folder, result = exported
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert llama.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    bos = tokenizer.bos_token or ""
    formatter = Jinja2ChatFormatter(template=llama.metadata["tokenizer.chat_template"], bos_token=bos,
                                    eos_token=tokenizer.eos_token or "")
    for chat in CHATS:
        trained = tokenizer(tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]
        prompt = formatter(messages=chat[:-1]).prompt
        # llama-cpp-python's chat path: the rendered prompt, special tokens parsed, no BOS added
        assert llama.tokenize(prompt.encode(), add_bos=False, special=True) == trained
        # llama-server's: a BOS the template wrote is dropped when the model adds its own, then the model's flag
        if llama._model.add_bos_token() and prompt.startswith(bos):
            prompt = prompt[len(bos):]
        assert llama.tokenize(prompt.encode(), add_bos=True, special=True) == trained, result.vocab


def test_llama_cpp_stops_at_the_end_of_turn_token(exported, llama):
    import llama_cpp
    from transformers import AutoTokenizer

    from lorakit.chat_template import end_of_turn_token

    _, folder, _ = exported
    eot, _ = end_of_turn_token(AutoTokenizer.from_pretrained(folder))
    assert llama_cpp.llama_vocab_is_eog(llama._model.vocab, eot)
    # a random model never picks the end of turn by itself: make it the only choice, then the reply must end there
    reply = llama.create_chat_completion(CHATS[0][:1], max_tokens=8, temperature=0.0, logit_bias={eot: 100.0})
    assert reply["choices"][0]["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] <= 1


def test_llama_cpp_predicts_what_the_transformers_model_predicts(exported, llama):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.export.verify import KL_TOLERANCE

    _, folder, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(tokenizer.apply_chat_template(CHATS[1], tokenize=False), add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    llama.reset()
    llama.eval(ids)
    ours = torch.from_numpy(np.array(llama.scores[: len(ids)])).log_softmax(-1)
    kl = (reference.exp() * (reference - ours)).sum(-1).mean().item()
    assert kl < KL_TOLERANCE["f16"], kl
    assert (reference.argmax(-1) == ours.argmax(-1)).float().mean() > 0.97


@pytest.mark.slow
def test_the_export_matches_llama_cpps_own_converter_where_it_converts(exported, converter_dir, tmp_path):
    import gguf

    from tests.real.converter import compare, convert_official, table, unexplained

    vocab, folder, result = exported
    official = tmp_path / "official-f16.gguf"
    done = convert_official(folder, official, "f16")
    if vocab.arch in ("phi3", "gemma2"):
        # its Phi-3 and Gemma-2 classes read SentencePiece scores from tokenizer.model only, which transformers v5
        # does not write and a tokenizer from a GGUF never had: there is nothing to compare with
        assert done.returncode != 0 and "tokenizer.model" in done.stderr
        return
    assert done.returncode == 0, done.stderr[-2000:]
    comparison = compare(result.path, official)
    assert comparison.tensors_same > 0 and not comparison.tensors_differ, table(comparison)
    assert not comparison.only_ours and not comparison.only_official
    arch = gguf.GGUFReader(official).fields["general.architecture"].contents()
    assert not unexplained(comparison, arch), table(comparison)
