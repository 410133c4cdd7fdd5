"""bitsandbytes deploy folders: the merged model quantized to 4-bit NF4 or 8-bit LLM.int8 and saved serialized."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lorakit.compat import INT8_CAST_LOGGER
from lorakit.config import Target
from lorakit.console import err
from lorakit.export.logit_gap import logits_for
from lorakit.export.serve_info import Artifact, eos_list, markdown, serve_commands
from lorakit.export.verify import KL_TOLERANCE, compare_models
from lorakit.export.writing import (
    TOKENIZER_FILES,
    ExportContext,
    QuantizeResult,
    checked_line,
    finish,
    refuse_if_off,
    written,
)
from lorakit.io import atomic_dir
from lorakit.model import keep_4bit_layout_on_cpu


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


# ---------------------------------------------------------------------------------------------------------------
# The bnb-4bit / bnb-8bit quantize targets (called by the dispatcher, lorakit.export.quantize)

DISK_FACTOR = 0.6


def check(targets: list[Target], config_folder: Path | None, verify: bool = True) -> None:
    """Nothing to check before work: bitsandbytes quantizes every linear layer on load."""


def prepare(ctx: ExportContext, targets: list[Target]) -> None:
    """Nothing to decide from the merged source before any folder is written."""


def export(ctx: ExportContext, jobs: list[tuple[Target, Path]]) -> list[QuantizeResult]:
    return [export_one(ctx, target, folder) for target, folder in jobs]


def export_one(ctx: ExportContext, target: Target, folder: Path) -> QuantizeResult:
    fmt, source = target.format, ctx.source
    verification: dict = {}
    with atomic_dir(folder, force=ctx.force, inputs=ctx.inputs) as staging:
        write_bnb(source, staging, fmt, TOKENIZER_FILES)
        files = sorted(p.name for p in staging.iterdir())
        if ctx.verify:
            samples, origin, source_logits = ctx.reference()
            with err.status("Verifying the export against its source..."):
                verification = verify_bnb(staging, samples, source_logits)
            verification.update(samples=origin, tolerance_kl=KL_TOLERANCE[fmt])
            refuse_if_off(target, verification, KL_TOLERANCE[fmt])
        runtimes = ["transformers"] if verification else []
        resolved = folder.resolve()
        artifact = Artifact("bnb", resolved, resolved.name, source=source.resolve(), eos=eos_list(source), method=fmt,
                            verified_runtimes=runtimes)
        readme = (f"# {source.name} ({fmt})\n\nbitsandbytes {fmt} of `{source}`, written by lorakit.\n\n"
                  + checked_line(runtimes) + markdown(serve_commands(artifact)).lstrip("\n"))
        outcome = finish(staging, folder, target, ctx, files, verification, runtimes, readme, {})
    written(folder)
    return outcome


def verify_bnb(staging: Path, samples, source_logits) -> dict:
    from transformers import AutoModelForCausalLM

    exported = keep_4bit_layout_on_cpu(AutoModelForCausalLM.from_pretrained(str(staging))).eval()
    # LLM.int8 warns once per layer and forward that it casts bf16 inputs to fp16: hundreds of lines, nothing to act on
    int8_chatter = logging.getLogger(INT8_CAST_LOGGER)
    level = int8_chatter.level
    int8_chatter.setLevel(logging.ERROR)
    try:
        return compare_models(source_logits, logits_for(exported, samples), samples)
    finally:
        int8_chatter.setLevel(level)
