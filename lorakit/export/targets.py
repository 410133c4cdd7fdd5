"""Where `lorakit quantize` writes each target, how the command line names them, and which GPUs serve each format.

The target vocabulary itself (Target, make_target, parse_target, the formats and GGUF types) lives in lorakit.config,
with the recipe that spells it; this module adds the folders (/work/signals naming: `<stem>-<label>`, where the stem
is the merged model's folder) and the command line's forms. Pure names and arithmetic: no torch here.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.config import (
    ALL_GGUF_TYPES,
    BNB_FORMATS,
    CALIBRATED_METHODS,
    CT_FORMATS,
    CT_METHODS,
    QUANTIZE_FORMATS,
    Target,
    make_target,
    parse_target,
    unique,
)
from lorakit.errors import ConfigError
from lorakit.outputs.layout import export_folder

__all__ = ["ALL_GGUF_TYPES", "BNB_FORMATS", "CALIBRATED_METHODS", "CT_FORMATS", "CT_METHODS", "GPUS",
           "MIN_CAPABILITY", "QUANTIZE_FORMATS", "Target", "default_output", "make_target", "parse_target",
           "requested_targets", "target_folders", "target_output", "unique"]

# The GPUs vLLM runs each compressed-tensors format on (the minimum compute capability of its kernels).
MIN_CAPABILITY = {"w4a16": "8.0", "w8a8": "8.0", "fp8": "8.9"}
GPUS = {
    "w4a16": "compute capability >= 8.0 (Ampere or newer: A100, A10/A40, RTX 30xx, L4, RTX 40xx, H100)",
    "w8a8": "compute capability >= 8.0 (Ampere or newer: A100, A10/A40, RTX 30xx, L4, RTX 40xx, H100)",
    "fp8": "compute capability >= 8.9 (Ada Lovelace or Hopper: RTX 40xx, L4, L40S, H100, H200)",
}


def default_output(source: Path, fmt: str, variant: str | None = None) -> Path:
    """`<stem>-<format>-<variant>` next to the source (the merged model): merged-gguf-q8_0, merged-w4a16-gptq."""
    return export_folder(source, fmt, variant)


def target_output(source: Path, target: Target) -> Path:
    return export_folder(source, target.label)


def target_folders(stem: Path, targets: list[Target], output_dir: Path | None) -> list[Path]:
    """Where each target goes: `-o DIR` names the folder of a single target, and the parent of several (each in
    DIR/<label>); without it, each goes next to the merged model as `<stem>-<label>`."""
    if output_dir is None:
        return [target_output(stem, t) for t in targets]
    if len(targets) == 1:
        return [Path(output_dir)]
    return [Path(output_dir) / t.label for t in targets]


def requested_targets(labels: list[str] | None, fmt: str | None, qtype: str | None, method: str | None
                      ) -> list[Target]:
    """The command line's targets: repeated --target, or one from --format/--type/--method (default gguf q8_0)."""
    if labels:
        if fmt or qtype or method:
            raise ConfigError("--target names format and type/method itself; it does not combine with --format, "
                              "--type or --method", hint="e.g. --target gguf-q8_0 --target w4a16-gptq")
        return unique([parse_target(label) for label in labels])
    fmt = fmt or "gguf"
    if qtype and fmt.strip().lower() != "gguf":
        raise ConfigError(f"--type {qtype} is a GGUF type; --format {fmt} does not take one",
                          hint="leave --type out, or use --method for compressed-tensors formats")
    if qtype is not None and not qtype.strip():
        raise ConfigError("--type is empty", hint="give a GGUF type (q8_0, q4_k_m, f16...), or leave --type out for "
                                                  "q8_0")
    types = [t for t in (qtype or "").split(",") if t.strip()] or [None]  # --type q8_0,q4_k_m: one folder each
    return unique([make_target(fmt, t, method) for t in types])
