"""Write a merged transformers model as GGUF: llama.cpp's converter for the mapping, then the requested type.

Where each type comes from:
- f16, bf16, q8_0: written by llama.cpp's converter itself (lorakit.export.gguf_converter), with lorakit's
  tokenizer part (lorakit.export.gguf_vocab);
- q4_0, q4_1, q5_0, q5_1: the converter's f16 file re-quantized here with `gguf.quants` (no compiler needed; the
  same tensors the converter quantizes at q8_0 are quantized, rows that do not split into blocks stay f16);
- q4_k_m, q5_k_m, q6_k: llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`, the lorakit[llama-cpp] extra)
  from the converter's f16 file.
Several types from one source share one f16 conversion (GGUFConversion).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lorakit.config import GGUF_K_TYPES as K_TYPES
from lorakit.config import GGUF_TYPES as PYTHON_TYPES
from lorakit.errors import ModelError, ResourceError
from lorakit.export.gguf_converter import plan_conversion, run_converter
from lorakit.export.gguf_vocab import llama_cpp_name

CONVERTER_TYPES = ("f16", "bf16", "q8_0")
REQUANTIZED_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1")
# CONVERTER_TYPES + REQUANTIZED_TYPES == PYTHON_TYPES (config.GGUF_TYPES): every type written without the extra


@dataclass
class GGUFResult:
    path: Path
    type: str
    arch: str                     # general.architecture, as the converter wrote it
    fallbacks: list[str] = field(default_factory=list)  # tensors kept in f16 (rows not divisible into blocks)
    vocab: dict[str, Any] = field(default_factory=dict)  # what the tokenizer part decided (gguf_vocab.add_vocab)


def check_type(qtype: str) -> None:
    if qtype in PYTHON_TYPES:
        return
    if qtype in K_TYPES:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ResourceError(f"GGUF type {qtype} needs llama.cpp's quantizer, from the optional extra "
                                "lorakit[llama-cpp] (llama-cpp-python)",
                                hint=f"pip install 'lorakit[llama-cpp]', or use one of {', '.join(PYTHON_TYPES)}")
        return
    raise ResourceError(f"unknown GGUF type {qtype!r}", hint=f"one of {', '.join(PYTHON_TYPES + K_TYPES)}")


def read_config(folder: Path) -> dict[str, Any]:
    """The source's config, refused when quantized or when the converter has no mapping for its architecture."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("quantization_config"):
        raise ModelError(f"{folder}: the model is quantized; GGUF export needs merged 16/32-bit weights",
                         hint="quantize the output of `lorakit merge` (or give the run folder)")
    plan_conversion(folder, config)
    return config


def _ggml_type(qtype: str):
    import gguf

    return getattr(gguf.GGMLQuantizationType, qtype.upper())


def _file_type(qtype: str):
    import gguf

    return getattr(gguf.LlamaFileType, f"MOSTLY_{qtype.upper()}")


def requantize(source: Path, target: Path, qtype: str, progress: Callable[[int, int], None] | None = None
               ) -> list[str]:
    """Re-write an f16 GGUF with its 16-bit matrices in `qtype` (gguf.quants); returns the tensors kept in f16.

    Every key is copied as it is but the file type. Tensors are quantized one at a time, twice (sizes first, then the
    bytes), so memory holds one tensor, whatever the model's size."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    kind = _ggml_type(qtype)
    block = gguf.GGML_QUANT_SIZES[kind][0]
    sixteen = (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for item in reader.fields.values():
        if item.name == "general.architecture" or item.name.startswith("GGUF."):
            continue
        if item.name == "general.file_type":
            writer.add_file_type(_file_type(qtype))
            continue
        sub_type = item.types[-1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(item.name, item.contents(), item.types[0], sub_type=sub_type)

    def plan(tensor):
        quantize = tensor.tensor_type in sixteen and len(tensor.data.shape) >= 2 and tensor.data.shape[-1] % block == 0
        return kind if quantize else tensor.tensor_type

    fallbacks = [t.name for t in reader.tensors if t.tensor_type in sixteen and len(t.data.shape) >= 2
                 and t.data.shape[-1] % block]
    for tensor in reader.tensors:
        target_kind = plan(tensor)
        shape = [int(n) for n in reversed(tensor.shape)]  # numpy order
        if target_kind != tensor.tensor_type:
            nbytes = gguf.quant_shape_to_byte_shape(shape, target_kind)
            writer.add_tensor_info(tensor.name, nbytes, np.dtype(np.uint8), int(np.prod(nbytes)), target_kind)
        else:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, tensor in enumerate(reader.tensors):
        target_kind = plan(tensor)
        data = tensor.data
        if target_kind != tensor.tensor_type:
            values = gguf.quants.dequantize(data, tensor.tensor_type).reshape([int(n) for n in reversed(tensor.shape)])
            data = gguf.quants.quantize(values.astype(np.float32), target_kind)
        writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        if progress:
            progress(index + 1, len(reader.tensors))
    writer.close()
    return fallbacks


@contextmanager
def native_output_captured():
    """llama.cpp's C code logs to the process's stderr (file descriptor 2), past Python and Rich: held in a
    temporary file for the duration, and yielded as a list that receives the text (for an error message)."""
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def k_quantize(f16_path: Path, target: Path, qtype: str) -> None:
    """K-quants through llama.cpp's own quantizer (llama-cpp-python), from an f16 GGUF."""
    import llama_cpp

    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
             "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K}[qtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with native_output_captured() as log:
        code = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(target).encode(), params)
    if code != 0:
        last = next((line for line in reversed(log[0].splitlines()) if line.strip()), "")
        raise ModelError(f"llama.cpp's quantizer failed on {f16_path.name} (code {code}): {last[:200]}",
                         hint="try a type the converter writes itself: q8_0 or f16")


def gguf_architecture(path: Path) -> str:
    import gguf

    return str(gguf.GGUFReader(path).fields["general.architecture"].contents())


class GGUFConversion:
    """One source, any number of GGUF types: the converter runs once per type it writes itself, and once at f16 for
    every type derived from f16 (kept in a scratch folder next to the outputs, deleted on exit)."""

    def __init__(self, folder: Path, scratch_parent: Path, progress: Callable[[str, int, int | None], None] = None):
        self.folder = folder
        self.config = read_config(folder)
        tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
        self.model_name = llama_cpp_name(folder.name, tokenizer_json)
        self.scratch_parent = scratch_parent
        self.progress = progress or (lambda label, done, total: None)
        self._scratch: Path | None = None
        self._f16: tuple[Path, dict[str, Any]] | None = None

    def __enter__(self) -> GGUFConversion:
        return self

    def __exit__(self, *exc) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _convert(self, outfile: Path, outtype: str) -> dict[str, Any]:
        return run_converter(self.folder, outfile, outtype, self.model_name,
                             lambda done: self.progress(f"Converting ({outtype}, llama.cpp's converter)", done, None))

    def _f16_file(self) -> tuple[Path, dict[str, Any]]:
        if self._f16 is None:
            self.scratch_parent.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(dir=self.scratch_parent, prefix=".lorakit-gguf-"))
            path = self._scratch / "model-f16.gguf"
            self._f16 = (path, self._convert(path, "f16"))
        return self._f16

    def write(self, qtype: str, target: Path) -> GGUFResult:
        if qtype in CONVERTER_TYPES:
            decided = self._convert(target, qtype)
            return GGUFResult(target, qtype, decided.get("arch") or gguf_architecture(target), [],
                              decided.get("vocab", {}))
        f16, decided = self._f16_file()
        fallbacks: list[str] = []
        if qtype in REQUANTIZED_TYPES:
            fallbacks = requantize(f16, target, qtype,
                                   lambda done, total: self.progress(f"Quantizing ({qtype})", done, total))
        else:
            self.progress(f"Quantizing ({qtype}, llama.cpp's quantizer)", 0, None)
            k_quantize(f16, target, qtype)
        return GGUFResult(target, qtype, decided.get("arch") or gguf_architecture(target), fallbacks,
                          decided.get("vocab", {}))


def write_gguf(folder: Path, target: Path, qtype: str, tokenizer=None,
               progress: Callable[[str, int, int | None], None] | None = None) -> GGUFResult:
    """One GGUF of `folder` at `qtype` (the tokenizer is read from the folder, as training saved it)."""
    del tokenizer  # the converter's subprocess loads the folder's own
    with GGUFConversion(folder, target.parent, progress) as conversion:
        return conversion.write(qtype, target)
