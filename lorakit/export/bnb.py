"""bitsandbytes deploy folders: the merged model quantized to 4-bit NF4 or 8-bit LLM.int8 and saved serialized."""

from __future__ import annotations

import shutil
from pathlib import Path

from lorakit.console import err


def write_bnb(source: Path, staging: Path, fmt: str, tokenizer_files: tuple[str, ...]) -> None:
    """A serialized bitsandbytes model (NF4 with double quantization, or LLM.int8) that `from_pretrained` loads as is,
    with the source's tokenizer files beside it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if fmt == "bnb-4bit":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.uint8)
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    device_map = "auto" if torch.cuda.is_available() else "cpu"
    with err.status(f"Quantizing with bitsandbytes ({fmt})..."):
        model = AutoModelForCausalLM.from_pretrained(str(source), quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map=device_map)
        model.save_pretrained(str(staging))
    for name in tokenizer_files:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
