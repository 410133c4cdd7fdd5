"""`lorakit quantize`: a merged model (or a run, merged first) -> one or several deployable, verified exports.

This module dispatches; each format family has its own exporter with the same three-part interface
(`DISK_FACTOR`, `check(targets, config_folder)` before any work, `export(ctx, jobs)` writing one folder per target):

- GGUF + Ollama Modelfile for llama.cpp / Ollama / LM Studio (lorakit.export.gguf_target)
- serialized bitsandbytes NF4 / LLM.int8 for transformers (lorakit.export.bnb)
- compressed-tensors W4A16 / W8A8 / FP8 for vLLM, SGLang and TGI (lorakit.export.compressed)

Several targets from one source share one merge and one scoring of the source; each is its own folder, written
atomically (lorakit.export.targets names them). Everything that can be checked before work is checked first: the
targets, the output folders, the source (whole, 16-bit), the shapes each format's kernels need and the calibration
data of GPTQ/AWQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.console import info
from lorakit.errors import ModelError, RunError
from lorakit.export import bnb, compressed, gguf_target
from lorakit.export.calibration import CalibrationRequest, calibration_rows
from lorakit.export.llmcompressor_env import ensure_env
from lorakit.export.targets import Target, default_output, make_target, target_folders, unique
from lorakit.export.writing import ExportContext, QuantizeResult, check_disk
from lorakit.integrity import check_model_files
from lorakit.merge import merge_run
from lorakit.runs import ADAPTER_FILES, RECIPE_FILE, check_can_write, merged_folder, read_manifest, read_run
from lorakit.safe_io import read_json

EXPORTERS = {"gguf": gguf_target, "bnb": bnb, "compressed-tensors": compressed}

__all__ = ["QuantizeResult", "default_output", "run_quantize", "quantize_targets"]


def is_adapter_run(folder: Path) -> bool:
    """A training run (whole or damaged: merging it reads it through read_run, which names what is wrong)."""
    return (folder / RECIPE_FILE).exists() or any((folder / name).exists() or (folder / name).is_symlink()
                                                   for name in ADAPTER_FILES)


def merged_source(source: Path, force: bool) -> Path:
    """A run folder is merged first (through `lorakit merge`), into <run>-merged, reused when already there."""
    target = merged_folder(source)
    merged = read_manifest(target)
    if merged and not force:
        recorded = merged.get("source")
        if recorded and Path(recorded).resolve() == source.resolve():
            merged_from = (merged.get("lineage") or [{}])[0].get("finished_at")
            finished = read_manifest(source).get("finished_at")
            if merged_from is not None and merged_from == finished:
                info(f"Using the existing merge {target}")
                return target
            why = (f"was merged from an earlier state of {source} (run finished {merged_from}, now {finished})"
                   if finished else f"cannot be checked against {source}, which has no run manifest")
            raise RunError(f"{target} {why}", hint=f"add --force to merge again (replaces {target})")
    info(f"{source} holds an adapter: merging it first")
    return merge_run(source, target, force=force).path


def check_source(folder: Path) -> dict[str, Any]:
    """A whole 16/32-bit transformers model: quantizing an already quantized one would stack two roundings."""
    if not folder.is_dir():
        raise ModelError(f"{folder} not found", hint="give a merged model folder or a run folder")
    if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        raise ModelError(f"{folder} is not a merged model (config.json and .safetensors) or an adapter run",
                         hint="run `lorakit merge` first, or give the sft/dpo run folder")
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder}: tokenizer.json is missing", hint="copy the tokenizer files next to the model")
    check_model_files(folder, f"model {folder}")  # JSON files parse, every safetensors file is whole
    config = read_json(folder / "config.json", ModelError)
    quantized = config.get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise ModelError(f"{folder} is already quantized ({method}); quantize needs the 16-bit merged model",
                         hint="give the output of `lorakit merge` (or the run folder)")
    return config


def check_run_base(run_folder: Path) -> Path | None:
    """A run's base must exist in 16 bits to merge into: an adapter trained over a checkpoint stored only in
    4-bit (a `*-bnb-4bit` upload) has none. Returns the base's local folder when there is one (its config gives
    the shapes to check before merging)."""
    run = read_run(run_folder)
    location = Path(str(run.manifest.get("base_model", {}).get("location", "")))
    if not (location / "config.json").is_file():
        return None
    quantized = read_json(location / "config.json", ModelError).get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise ModelError(f"the base of {run_folder} ({location}) is stored quantized ({method}): there is no 16-bit "
                         "base to merge the adapter into", hint="merge into the 16-bit release of that model with "
                         f"`lorakit merge {run_folder} --model 16BIT_BASE`, then quantize the merged folder")
    return location


def run_quantize(source: str | Path, fmt: str = "gguf", qtype: str | None = "q8_0",
                 output_dir: str | Path | None = None, force: bool = False, verify: bool = True,
                 modelfile: bool = True, method: str | None = None,
                 calibration: CalibrationRequest | None = None) -> QuantizeResult:
    """One target (the `--format/--type/--method` form): its folder is `output_dir` or `<merged>-<label>`."""
    target = make_target(fmt, qtype if (fmt or "").strip().lower() == "gguf" else None, method)
    return quantize_targets(source, [target], output_dir, force, verify, modelfile, calibration)[0]


def quantize_targets(source: str | Path, targets: list[Target], output_dir: str | Path | None = None,
                     force: bool = False, verify: bool = True, modelfile: bool = True,
                     calibration: CalibrationRequest | None = None,
                     folders: list[Path] | None = None) -> list[QuantizeResult]:
    """Every target from one source, one merge, one scoring of the source; results in the targets' order."""
    source = Path(source)
    targets = unique(targets)
    run_folder = source if source.is_dir() and is_adapter_run(source) else None
    stem = merged_folder(source) if run_folder else source
    folders = folders or target_folders(stem, targets, Path(output_dir) if output_dir is not None else None)
    inputs = [source] + ([stem] if run_folder else [])
    for folder in folders:
        check_can_write(folder, force, inputs=inputs)

    # before any work: what each format needs of this model, and the calibration data
    if run_folder:
        base = check_run_base(run_folder)
        whole = read_manifest(stem).get("status") == "complete" and (stem / "config.json").is_file()
        config_folder = stem if whole else base
    else:
        check_source(source)
        config_folder = source
    groups: dict[str, list[tuple[Target, Path]]] = {}
    for target, folder in zip(targets, folders):
        groups.setdefault(target.family, []).append((target, folder))
    for family, jobs in groups.items():
        EXPORTERS[family].check([t for t, _ in jobs], config_folder)
    rows = None
    if any(t.calibrated for t in targets):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(run_folder or source))  # a run keeps its chat template
        rows = calibration_rows(source, tokenizer, calibration or CalibrationRequest())
        ensure_env()

    if run_folder:
        source = merged_source(run_folder, force)
        check_source(source)
        if config_folder != source:
            for family, jobs in groups.items():
                EXPORTERS[family].check([t for t, _ in jobs], source)
    for family, jobs in groups.items():
        for _, folder in jobs:
            check_disk(source, folder, EXPORTERS[family].DISK_FACTOR)

    from transformers import AutoTokenizer

    ctx = ExportContext(source, AutoTokenizer.from_pretrained(str(source)), verify, force, inputs, modelfile, rows)
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
