"""What `lorakit quantize` can write, how a target is spelled, and where it goes by default.

A target is one output: a format plus, where the format has several, its type (GGUF) or method (compressed-tensors).
Its label is the one spelling used everywhere: `--target LABEL`, a pipeline's `quantize.targets`, and the suffix of
the default folder (`<stem>-<label>`, where the stem is the merged model's folder; /work/signals/i27-naming.md):

    gguf-q8_0  gguf-q4_k_m  bnb-4bit  bnb-8bit  w4a16-rtn  w4a16-gptq  w4a16-awq  w8a8-rtn  w8a8-gptq  fp8-dynamic

Pure names and arithmetic: no torch here, so recipes validate and `--help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import ConfigError

GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k")
BNB_FORMATS = ("bnb-4bit", "bnb-8bit")
# compressed-tensors schemes (the checkpoints vLLM, SGLang and TGI load natively) and the methods each takes. RTN
# (round to nearest) needs no data; GPTQ and AWQ calibrate on rows of the run's training data through llm-compressor.
CT_METHODS = {"w4a16": ("rtn", "gptq", "awq"), "w8a8": ("rtn", "gptq"), "fp8": ("dynamic",)}
CT_FORMATS = tuple(CT_METHODS)
FORMATS = ("gguf", *BNB_FORMATS, *CT_FORMATS)
CALIBRATED = ("gptq", "awq")
# The GPUs vLLM runs each compressed-tensors format on (the minimum compute capability of its kernels).
MIN_CAPABILITY = {"w4a16": "8.0", "w8a8": "8.0", "fp8": "8.9"}
GPUS = {
    "w4a16": "compute capability >= 8.0 (Ampere or newer: A100, A10/A40, RTX 30xx, L4, RTX 40xx, H100)",
    "w8a8": "compute capability >= 8.0 (Ampere or newer: A100, A10/A40, RTX 30xx, L4, RTX 40xx, H100)",
    "fp8": "compute capability >= 8.9 (Ada Lovelace or Hopper: RTX 40xx, L4, L40S, H100, H200)",
}
# Formats that were once spelled as --format and are methods now (an old recipe or command gets a pointer).
RENAMED = {"gptq": "--format w4a16 --method gptq", "awq": "--format w4a16 --method awq"}


@dataclass(frozen=True)
class Target:
    format: str  # one of FORMATS
    type: str | None = None  # GGUF type
    method: str | None = None  # compressed-tensors method

    @property
    def label(self) -> str:
        if self.format == "gguf":
            return f"gguf-{self.type}"
        if self.format in CT_FORMATS:
            return f"{self.format}-{self.method}"
        return self.format

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED

    @property
    def family(self) -> str:
        """Which exporter writes it: gguf, bnb or compressed-tensors."""
        return "gguf" if self.format == "gguf" else "bnb" if self.format in BNB_FORMATS else "compressed-tensors"


def make_target(fmt: str, qtype: str | None = None, method: str | None = None, where: str = "--format") -> Target:
    """A target from the separate flags (`--format`, `--type`, `--method`), checked; ConfigError names the flag."""
    fmt = (fmt or "").strip().lower()
    if fmt in RENAMED:
        raise ConfigError(f"{where} {fmt} is a method now, not a format: {fmt.upper()} runs with llm-compressor on "
                          "w4a16 (or w8a8) checkpoints", hint=f"use {RENAMED[fmt]}")
    if fmt not in FORMATS:
        raise ConfigError(f"{where} {fmt!r} is not one of {', '.join(FORMATS)}", hint="e.g. --format gguf, w4a16")
    if fmt == "gguf":
        if method:
            raise ConfigError(f"--method {method} does not apply to GGUF", hint="GGUF takes --type (q8_0, q4_k_m...)")
        qtype = (qtype or "q8_0").strip().lower()
        if qtype not in GGUF_TYPES:
            raise ConfigError(f"unknown GGUF type {qtype!r}", hint=f"one of {', '.join(GGUF_TYPES)}")
        return Target("gguf", type=qtype)
    if fmt in BNB_FORMATS:
        if method:
            raise ConfigError(f"--method {method} does not apply to {fmt}", hint="bitsandbytes quantizes on load")
        return Target(fmt)
    methods = CT_METHODS[fmt]
    method = (method or methods[0]).strip().lower()
    if fmt == "fp8" and method == "rtn":
        method = "dynamic"  # FP8 weights are rounded to nearest too; "dynamic" names its per-token activation scales
    if method not in methods:
        raise ConfigError(f"--method {method!r} does not apply to {fmt}: it takes {', '.join(methods)}",
                          hint="w4a16: rtn, gptq or awq; w8a8: rtn or gptq; fp8: dynamic (no calibration)")
    return Target(fmt, method=method)


def parse_target(label: str, where: str = "--target") -> Target:
    """`gguf-q4_k_m`, `w4a16-gptq`, `w4a16` (its first method), `bnb-4bit`... -> Target."""
    text = (label or "").strip().lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):  # bnb-4bit before a shorter prefix could claim it
        if text == fmt:
            return make_target(fmt, where=where)
        if text.startswith(fmt + "-"):
            rest = text[len(fmt) + 1:]
            if fmt == "gguf":
                return make_target(fmt, qtype=rest, where=where)
            if fmt in CT_FORMATS:
                return make_target(fmt, method=rest, where=where)
    examples = "gguf-q8_0, gguf-q4_k_m, bnb-4bit, w4a16-rtn, w4a16-gptq, w8a8-rtn, fp8-dynamic"
    raise ConfigError(f"{where} {label!r} is not a quantize target", hint=f"FORMAT or FORMAT-TYPE/METHOD: {examples}")


def unique(targets: list[Target]) -> list[Target]:
    """The targets in order, each once (two spellings of one target would write one folder twice)."""
    seen: dict[str, Target] = {}
    for target in targets:
        seen.setdefault(target.label, target)
    return list(seen.values())


def default_output(source: Path, fmt: str, variant: str | None = None) -> Path:
    """`<stem>-<format>-<variant>` next to the source (the merged model): merged-gguf-q8_0, merged-w4a16-gptq."""
    source = Path(source)
    return source.with_name(f"{source.name}-{fmt}" + (f"-{variant}" if variant else ""))


def target_output(source: Path, target: Target) -> Path:
    return Path(source).with_name(f"{Path(source).name}-{target.label}")


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
    types = [t for t in (qtype or "").split(",") if t.strip()] or [None]  # --type q8_0,q4_k_m: one folder each
    return unique([make_target(fmt, t, method) for t in types])
