"""quantize: GGUF and bitsandbytes exports of tiny trained models, verified against their source."""

import importlib.util
import json
import shutil

import pytest

from lorakit.errors import LorakitError
from lorakit.export.gguf_export import PYTHON_TYPES
from lorakit.export.quantize import run_quantize
from lorakit.export.verify import KL_TOLERANCE

from ..helpers import assert_clean_error, invoke

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
pytestmark = pytest.mark.slow  # every test here exports a trained model


@pytest.fixture(scope="module")
def merged(sft_run, tmp_path_factory):
    from lorakit.export.merge import merge_run

    return merge_run(sft_run.path, tmp_path_factory.mktemp("quantize") / "merged").path


def gguf_fields(path):
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.STRING and len(field.data) == 1:
            fields[name] = bytes(field.parts[field.data[0]]).decode()
        elif len(field.data) == 1:
            fields[name] = field.parts[field.data[0]][0].item()
    return reader, fields


@pytest.mark.parametrize("qtype", PYTHON_TYPES)
def test_every_python_type_round_trips_through_transformers(merged, tmp_path, qtype):
    result = run_quantize(merged, "gguf", qtype, tmp_path / "out")
    summary = result.summary
    assert summary["mean_kl"] <= KL_TOLERANCE[qtype]
    assert summary["top1_agreement"] >= {"f16": 0.999, "bf16": 0.999, "q8_0": 0.97}.get(qtype, 0.75)
    assert summary["tokenization_mismatches"] == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["verification"]["tensors"] > 0 and manifest["type"] == qtype
    assert (tmp_path / "out" / f"model-{qtype}.gguf").is_file()


def test_gguf_metadata_carries_template_eos_eot_and_control_tokens(merged, tmp_path):
    import gguf
    from transformers import AutoTokenizer

    run_quantize(merged, "gguf", "q8_0", tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    reader, fields = gguf_fields(tmp_path / "out" / "model-q8_0.gguf")
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.eot_token_id"] == im_end
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    types = reader.fields["tokenizer.ggml.token_type"]
    token_type = lambda i: types.parts[types.data[i]][0]  # noqa: E731
    assert token_type(tokenizer.convert_tokens_to_ids("<|im_start|>")) == gguf.TokenType.CONTROL
    assert token_type(tokenizer.convert_tokens_to_ids("a")) == gguf.TokenType.NORMAL
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf")
    # The TEMPLATE is built from the model's ChatML template: the user and generation pieces, and its stop token.
    assert '{{ "<|im_start|>user\\n" }}' in modelfile and '{{ "<|im_end|>\\n<|im_start|>assistant\\n" }}' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "ollama create" in (tmp_path / "out" / "README.md").read_text()


def test_qwen2_tied_embeddings_export(tiny_qwen2, tmp_path):
    result = run_quantize(tiny_qwen2, "gguf", "q8_0", tmp_path / "out", modelfile=False)
    assert result.summary["mean_kl"] <= KL_TOLERANCE["q8_0"]
    assert result.summary["tokenization_mismatches"] == 0
    reader, fields = gguf_fields(tmp_path / "out" / "model-q8_0.gguf")
    assert fields["general.architecture"] == "qwen2" and fields["tokenizer.ggml.pre"] == "qwen2"
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    assert "blk.0.attn_q.bias" in names


def test_run_folder_is_merged_first(sft_run, tmp_path):
    result = run_quantize(sft_run.path, "gguf", "q8_0", tmp_path / "gguf")
    merged = sft_run.path.with_name(f"{sft_run.path.name}-merged")
    assert json.loads((merged / "manifest.json").read_text())["source"] == str(sft_run.path.resolve())
    assert json.loads((tmp_path / "gguf" / "manifest.json").read_text())["source"] == str(merged.resolve())
    assert result.summary["mean_kl"] <= KL_TOLERANCE["q8_0"]


def test_a_merge_older_than_its_run_is_not_exported(sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sft_run.path, run, ignore=shutil.ignore_patterns("checkpoints"))
    run_quantize(run, "gguf", "q8_0", tmp_path / "first")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["finished_at"] = "2099-01-01T00:00:00+00:00"  # the run was trained again since that merge
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LorakitError, match="earlier state"):
        run_quantize(run, "gguf", "q8_0", tmp_path / "second")
    assert not (tmp_path / "second").exists()
    run_quantize(run, "gguf", "q8_0", tmp_path / "second", force=True)
    merged = json.loads((tmp_path / "run-merged" / "manifest.json").read_text())
    assert merged["lineage"][0]["finished_at"] == manifest["finished_at"]


@pytest.mark.parametrize("fmt", ["bnb-4bit", "bnb-8bit"])
def test_bitsandbytes_export_reloads_with_transformers(merged, tmp_path, fmt):
    from transformers import AutoModelForCausalLM

    result = run_quantize(merged, fmt, None, tmp_path / "out")
    assert result.summary["mean_kl"] <= KL_TOLERANCE[fmt]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"]["load_in_4bit" if fmt == "bnb-4bit" else "load_in_8bit"] is True
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def test_failed_verification_leaves_nothing(merged, tmp_path, monkeypatch):
    monkeypatch.setitem(KL_TOLERANCE, "q4_0", 0.0)
    with pytest.raises(LorakitError, match="does not match its source"):
        run_quantize(merged, "gguf", "q4_0", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_cli_bad_inputs(merged, tmp_path):
    assert_clean_error(invoke("quantize", merged, "--type", "q3_x", "-o", tmp_path / "a"), "unknown GGUF type")
    if not HAS_LLAMA_CPP:
        assert_clean_error(invoke("quantize", merged, "--type", "q4_k_m", "-o", tmp_path / "b"), "lorakit[llama-cpp]")
    assert_clean_error(invoke("quantize", merged, "--format", "gptq", "-o", tmp_path / "c"), "llm-compressor")
    assert_clean_error(invoke("quantize", tmp_path / "nothing"), "not found")
    other = tmp_path / "gpt2"
    shutil.copytree(merged, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert_clean_error(invoke("quantize", other, "-o", tmp_path / "d"), "no GGUF mapping")
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(merged, no_tok)
    (no_tok / "tokenizer.json").unlink()
    assert_clean_error(invoke("quantize", no_tok, "-o", tmp_path / "e"), "tokenizer.json is missing")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    assert_clean_error(invoke("quantize", merged, "-o", tmp_path / "taken"), "already exists")
    assert (tmp_path / "taken" / "x").read_text() == "keep"
    for name in "abcde":
        assert not (tmp_path / name).exists()


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="needs the llama-cpp extra: pip install 'lorakit[llama-cpp]'")
def test_k_quant_runs_in_llama_cpp(merged, tmp_path):
    result = run_quantize(merged, "gguf", "q4_k_m", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["verification"]["llama_cpp"]["top1_agreement"] > 0.5
    assert result.summary["mean_kl"] <= KL_TOLERANCE["q4_k_m"]
