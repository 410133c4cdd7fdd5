"""`lorakit quantize`: a merged model (or a run, merged first) -> one or several deployable, verified exports.

This module dispatches; each format family has its own exporter with the same interface:

    DISK_FACTOR                       disk needed per byte of the source's weights
    check(targets, config_folder, verify)
                                      before any work: what the model's config allows (config_folder: the merged
                                      model, or the run's base before merging), and that it can be verified here
    prepare(ctx, targets)             after the merge, before any folder is written: what can still fail on the
                                      merged source itself (GGUF: the Ollama Modelfile; compressed-tensors: shapes)
    export(ctx, jobs)                 one verified folder per (target, folder)

- GGUF + Ollama Modelfile for llama.cpp / Ollama / LM Studio, through llama.cpp's converter (lorakit.export.gguf_target)
- serialized bitsandbytes NF4 / LLM.int8 for transformers (lorakit.export.bnb)
- compressed-tensors W4A16 / W8A8 / FP8 for vLLM, SGLang and TGI (lorakit.export.compressed)

Several targets from one source share one merge and one scoring of the source; each is its own folder, written
atomically, under its own writer lock (lorakit.export.targets names them). Every target is checked before any folder is
written: the targets, the output folders, the source (whole, 16-bit), what each format needs of the model, and the
calibration data of GPTQ/AWQ.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from lorakit.config import Target
from lorakit.console import info
from lorakit.errors import ConfigError, LorakitError, ModelError, RunError
from lorakit.export import bnb, compressed, gguf_target
from lorakit.export.calibration import CalibrationRequest, calibration_rows
from lorakit.export.llmcompressor_env import ensure_env
from lorakit.export.merge import merge_run
from lorakit.export.targets import default_output, make_target, target_folders, unique
from lorakit.export.writing import ExportContext, QuantizeResult, check_disk
from lorakit.io import check_can_write, read_json
from lorakit.model import base_source_of
from lorakit.outputs import MergeManifest, Output, hold_output, open_output, read_run
from lorakit.outputs.integrity import check_model_files
from lorakit.outputs.layout import merged_folder

EXPORTERS = {"gguf": gguf_target, "bnb": bnb, "compressed-tensors": compressed}

__all__ = ["QuantizeResult", "default_output", "quantize_targets", "run_quantize", "summaries"]


def is_adapter_run(output: Output) -> bool:
    """A training run (whole or damaged: merging it reads it through read_run, which names what is wrong)."""
    return output.is_training_run or output.looks_like_run


def merged_source(source: Path, force: bool) -> Path:
    """A run folder is merged first (through `lorakit merge`), into <run>-merged, reused when already there."""
    target = merged_folder(source)
    try:
        merged = open_output(target).manifest if target.is_dir() else None
    except LorakitError:
        merged = None  # unreadable: merged again below (with --force), or refused as an existing folder
    if merged is not None and not force:
        recorded = merged.source if isinstance(merged, MergeManifest) else None
        if recorded and Path(recorded).resolve() == source.resolve():
            lineage = merged.lineage if isinstance(merged, MergeManifest) else []
            merged_from = lineage[0].finished_at if lineage else None
            run = open_output(source).manifest
            finished = run.written_at if run is not None else None
            if merged_from is not None and merged_from == finished:
                info(f"Using the existing merge {target}")
                return target
            why = (f"was merged from an earlier state of {source} (run finished {merged_from}, now {finished})"
                   if finished else f"cannot be checked against {source}, which has no run manifest")
            raise RunError(f"{target} {why}", hint=f"add --force to merge again (replaces {target})")
    info(f"{source} holds an adapter: merging it first")
    # dtype None: merge_run's own choice (bfloat16, or float32 for a base unpacked from a GGUF file)
    return merge_run(source, target, force=force).path


def check_source(folder: Path) -> dict[str, Any]:
    """A merged model quantize can read: its manifest (when it has one) reads and is a merge's, its files are whole,
    its config fits its weights, it has a tokenizer, and it is not quantized already (two roundings would stack)."""
    if not folder.is_dir():
        raise ModelError(f"{folder} not found", hint="give a merged model folder or a run folder")
    output = open_output(folder)  # a manifest that does not read is named, not skipped
    if output.kind == "export" or output.stage is not None and output.manifest is None:
        what = "an export" if output.kind == "export" else f"a '{output.stage}' folder"
        raise ModelError(f"{folder} is {what}, not a merged model",
                         hint="quantize a merged model (lorakit merge) or the sft/dpo run folder")
    if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        raise ModelError(f"{folder} is not a merged model (config.json and .safetensors) or an adapter run",
                         hint="run `lorakit merge` first, or give the sft/dpo run folder")
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder}: tokenizer.json is missing", hint="copy the tokenizer files next to the model")
    # JSON files parse, every safetensors file is whole, and the config's sizes are the weights' sizes
    check_model_files(folder, f"model {folder}")
    config = read_json(folder / "config.json", ModelError)
    refuse_quantized(folder, config, "quantize needs the 16-bit merged model",
                     "give the output of `lorakit merge` (or the run folder)")
    return config


def refuse_quantized(folder: Path, config: dict[str, Any], why: str, hint: str) -> None:
    quantized = config.get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise ModelError(f"{folder} is already quantized ({method}); {why}", hint=hint)


def check_run_base(run_folder: Path) -> Path | None:
    """A run's base must exist in 16 bits to merge into: an adapter trained over a checkpoint stored only in
    4-bit (a `*-bnb-4bit` upload) has none. Returns the base's local folder when there is one (its config gives
    the shapes to check before merging)."""
    try:
        base = base_source_of(read_run(run_folder))
    except LorakitError:
        return None  # merging names what is wrong with the run
    location = Path(base.location) if base.is_local else None
    if location is None or not (location / "config.json").is_file():
        return None
    config = read_json(location / "config.json", ModelError)
    refuse_quantized(location, config, f"there is no 16-bit base to merge the adapter of {run_folder} into",
                     f"merge into the 16-bit release of that model with `lorakit merge {run_folder} --model "
                     "16BIT_BASE`, then quantize the merged folder")
    return location


def run_quantize(source: str | Path, fmt: str = "gguf", qtype: str | None = "q8_0",
                 output_dir: str | Path | None = None, force: bool = False, verify: bool = True,
                 modelfile: bool = True, method: str | None = None,
                 calibration: CalibrationRequest | None = None) -> QuantizeResult:
    """One target (the `--format/--type/--method` form): its folder is `output_dir` or `<merged>-<label>`."""
    gguf = (fmt or "").strip().lower() == "gguf"
    if gguf and qtype is not None and not qtype.strip():
        raise ConfigError("--type is empty", hint="give a GGUF type (q8_0, q4_k_m, f16...), or leave --type out for q8_0")
    target = make_target(fmt, qtype if gguf else None, method)
    return quantize_targets(source, [target], output_dir, force, verify, modelfile, calibration)[0]


def quantize_targets(source: str | Path, targets: list[Target], output_dir: str | Path | None = None,
                     force: bool = False, verify: bool = True, modelfile: bool = True,
                     calibration: CalibrationRequest | None = None,
                     folders: list[Path] | None = None) -> list[QuantizeResult]:
    """Every target from one source, one merge, one scoring of the source; results in the targets' order."""
    source = Path(source)
    targets = unique(targets)
    adapter_run = is_adapter_run(open_output(source))  # and a source another command is still writing is refused
    stem = merged_folder(source) if adapter_run else source
    folders = folders or target_folders(stem, targets, Path(output_dir) if output_dir is not None else None)
    with contextlib.ExitStack() as held:
        for folder in folders:
            held.enter_context(hold_output(folder, "lorakit quantize"))
        if adapter_run:  # the run is merged first, into its -merged folder: that one is written too
            held.enter_context(hold_output(stem, "lorakit quantize"))
        return _quantize(source, targets, folders, adapter_run, force, verify, modelfile, calibration)


def _quantize(source: Path, targets: list[Target], folders: list[Path], adapter_run: bool, force: bool, verify: bool,
              modelfile: bool, calibration: CalibrationRequest | None) -> list[QuantizeResult]:
    stem = merged_folder(source) if adapter_run else source
    inputs = [source] + ([stem] if adapter_run else [])
    for folder in folders:
        check_can_write(folder, force, inputs=inputs)

    # before any work: what each format needs of this model (from the merge when it is there, else the run's base),
    # and the calibration data
    if adapter_run:
        base = check_run_base(source)
        try:
            whole = stem.is_dir() and open_output(stem).complete and (stem / "config.json").is_file()
        except LorakitError:
            whole = False
        config_folder = stem if whole else base
    else:
        check_source(source)
        config_folder = source
    groups: dict[str, list[tuple[Target, Path]]] = {}
    for target, folder in zip(targets, folders):
        groups.setdefault(target.family, []).append((target, folder))
    for family, jobs in groups.items():
        EXPORTERS[family].check([t for t, _ in jobs], config_folder, verify)
    rows = None
    if any(t.calibrated for t in targets):
        tokenizer = AutoTokenizer.from_pretrained(str(source))  # a run keeps its chat template
        rows = calibration_rows(source, tokenizer, calibration or CalibrationRequest())
        ensure_env()

    if adapter_run:
        source = merged_source(source, force)
        check_source(source)
        if config_folder != source:
            for family, jobs in groups.items():
                EXPORTERS[family].check([t for t, _ in jobs], source, verify)
    for folder in folders:
        check_can_write(folder, force, inputs=inputs)
    for family, jobs in groups.items():
        for _, folder in jobs:
            check_disk(source, folder, EXPORTERS[family].DISK_FACTOR)

    ctx = ExportContext(source, AutoTokenizer.from_pretrained(str(source)), verify, force, inputs, modelfile, rows)
    # what can still fail on the merged source itself (an Ollama template, a layer's shape) fails here, before the
    # first folder is written: a command never leaves some of its targets written and others refused
    for family, jobs in groups.items():
        EXPORTERS[family].prepare(ctx, [t for t, _ in jobs])
    results: dict[str, QuantizeResult] = {}
    for family, jobs in groups.items():
        for (target, _), result in zip(jobs, EXPORTERS[family].export(ctx, jobs)):
            results[target.label] = result
    if len(targets) > 1:
        info("Written: " + ", ".join(str(results[t.label].path) for t in targets))
    return [results[t.label] for t in targets]


def summaries(results: list[QuantizeResult]) -> dict[str, Any] | list[dict[str, Any]]:
    """One summary for one target (as before), a list for several."""
    return results[0].summary if len(results) == 1 else [r.summary for r in results]
