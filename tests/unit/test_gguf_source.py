"""GGUF files as model sources: what is refused before anything is unpacked (files written here, no model)."""

import numpy as np
import pytest

from lorakit.errors import ModelError
from lorakit.model import resolve_model_source

from ..helpers import assert_clean_error, invoke


def write_gguf(path, arch="llama", tensor=None, **fields):
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in fields.items():
        writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", tensor if tensor is not None else np.zeros((4, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_architecture_transformers_cannot_load_is_named(tmp_path):
    path = write_gguf(tmp_path / "model.gguf", arch="rwkv6")
    with pytest.raises(ModelError, match=r"model.gguf: GGUF architecture 'rwkv6' cannot be loaded by transformers"):
        resolve_model_source(str(path))


def test_an_encoder_only_architecture_is_refused_as_not_a_causal_lm(tmp_path):
    path = write_gguf(tmp_path / "t5.gguf", arch="t5")
    with pytest.raises(ModelError, match="'t5' cannot be loaded .* as a causal LM"):
        resolve_model_source(str(path))


def test_a_tensor_type_gguf_cannot_dequantize_is_named(tmp_path):
    path = write_gguf(tmp_path / "ints.gguf", tensor=np.zeros((4, 32), dtype=np.int32))
    with pytest.raises(ModelError, match=r"tensor type I32 \(1 tensors\) cannot be dequantized"):
        resolve_model_source(str(path))


def test_a_split_gguf_part_is_refused_with_the_merge_command(tmp_path):
    path = write_gguf(tmp_path / "model-00001-of-00002.gguf", **{"split.count": 2})
    with pytest.raises(ModelError, match="one part of a split GGUF") as raised:
        resolve_model_source(str(path))
    assert "llama-gguf-split --merge" in raised.value.hint


def test_a_file_named_gguf_that_is_not_one_is_refused(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"<html>404</html>")
    with pytest.raises(ModelError, match="is not a GGUF file"):
        resolve_model_source(str(path))


def test_the_cli_error_is_one_line_naming_the_architecture(tmp_path):
    path = write_gguf(tmp_path / "model.gguf", arch="rwkv6")
    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    result = invoke("sft", "--model", path, "--data", data, "--output-dir", tmp_path / "run", "--max-steps", "1")
    assert_clean_error(result, "rwkv6", leftover=tmp_path / "run")
