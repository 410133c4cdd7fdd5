"""`lorakit quantize`: a merged model (or a run, merged first) -> GGUF + Modelfile, or serialized bitsandbytes.

Every export is verified against its source before it is kept: logits and weights through transformers' loader
(GGUF included, for the architectures it reads), tokenization of sample chats, and llama.cpp itself when installed.
Several GGUF types from one source (`--type q8_0,q4_k_m`) are one merge, one conversion and one folder each.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.console import err, info, warn
from lorakit.errors import ConfigError, ModelError, ResourceError, RunError
from lorakit.safe_io import read_json
from lorakit.runs import (ADAPTER_FILES, MANIFEST_FILE, RECIPE_FILE, atomic_dir, check_can_write, merged_folder, now,
                          package_versions, read_manifest, training_run_behind, write_json_atomic, write_text_atomic)

FORMATS = ("gguf", "bnb-4bit", "bnb-8bit", "awq", "gptq")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")
NOT_HERE = ("{fmt} export needs llm-compressor (compressed-tensors W4A16), which pins transformers<=5.17 and so "
            "cannot share lorakit's environment, or GPTQModel, which installs a CUDA build of torch")


@dataclass
class QuantizeResult:
    path: Path
    files: list[str]
    summary: dict[str, Any]


def default_output(source: Path, fmt: str, variant: str | None = None) -> Path:
    """<source>-<format>[-<variant>]: merged-gguf-q4_k_m, merged-bnb-4bit (/work/signals naming: one scheme)."""
    return source.with_name(f"{source.name}-{fmt}" + (f"-{variant}" if variant else ""))


def is_adapter_run(folder: Path) -> bool:
    """A training run (whole or damaged: merging it reads it through read_run, which names what is wrong)."""
    return (folder / RECIPE_FILE).exists() or any((folder / name).exists() or (folder / name).is_symlink()
                                                   for name in ADAPTER_FILES)


def merged_source(source: Path, force: bool) -> Path:
    """A run folder is merged first (through `lorakit merge`), into <run>-merged, reused when already there."""
    from lorakit.merge import merge_run

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
    if not folder.is_dir():
        raise ModelError(f"{folder} not found", hint="give a merged model folder or a run folder")
    if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        raise ModelError(f"{folder} is not a merged model (config.json and .safetensors) or an adapter run",
                         hint="run `lorakit merge` first, or give the sft/dpo run folder")
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder}: tokenizer.json is missing", hint="copy the tokenizer files next to the model")
    from lorakit.integrity import check_model_files

    check_model_files(folder, f"model {folder}")  # JSON files parse, every safetensors file is whole
    return read_json(folder / "config.json", ModelError)


def check_disk(folder: Path, target: Path, factor: float) -> None:
    need = sum(f.stat().st_size for f in folder.glob("*.safetensors")) * factor
    free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    if free < need:
        raise ResourceError(f"not enough disk for {target}: needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free",
                            hint="free some space or pass --output-dir on another disk")


def system_prompt_of(folder: Path) -> str | None:
    run = training_run_behind(folder)
    return run.recipe.data.system_prompt if run is not None else None


def export_readme(target: Path, files: list[str], source: Path, fmt: str, qtype: str | None,
                  runtimes: list[str]) -> str:
    """The export's README: what it is, and the commands that serve it (lorakit.export.serve_info)."""
    from lorakit.export.serve_info import Artifact, eos_list, markdown, serve_commands

    target = target.resolve()
    name = files[0] if fmt == "gguf" else ""
    if fmt == "gguf":
        head = f"# {name}\n\nGGUF ({qtype}) of `{source}`, written by lorakit.\n\n"
        artifact = Artifact("gguf", target, target.name, gguf_file=name, source=source.resolve(),
                            eos=eos_list(source), verified_runtimes=runtimes, modelfile="Modelfile" in files)
    else:
        head = f"# {source.name} ({fmt})\n\nbitsandbytes {fmt} of `{source}`, written by lorakit.\n\n"
        artifact = Artifact("bnb", target, target.name, source=source.resolve(), eos=eos_list(source), method=fmt,
                            verified_runtimes=runtimes)
    checked = (f"Loaded and compared with its source here by: {', '.join(runtimes)} (manifest.json "
               "`verified_runtimes`, figures under `verification`).\n\n" if runtimes else
               "Not verified (written with --no-verify).\n\n")
    return head + checked + markdown(serve_commands(artifact)).lstrip("\n")


def verified_runtimes(fmt: str, verification: dict[str, Any]) -> list[str]:
    """The runtimes that loaded this export and matched its source here (the manifest's record)."""
    if not verification:
        return []
    runtimes = ["transformers"] if fmt != "gguf" or verification.get("judged_by") == "transformers" else []
    if fmt == "gguf" and verification.get("llama_cpp"):
        runtimes.append("llama.cpp")
    return runtimes


def _progress_writer(total_label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(TextColumn(total_label), BarColumn(), MofNCompleteColumn(), console=err, transient=True)
    return progress


def gguf_types(qtype: str | None) -> list[str]:
    """`--type q8_0,q4_k_m` -> ["q8_0", "q4_k_m"], each checked (K-quants need the llama-cpp extra)."""
    from lorakit.export.gguf_export import check_type

    types = [part.strip().lower() for part in (qtype or "q8_0").split(",") if part.strip()]
    if not types:
        raise ConfigError("--type is empty", hint="e.g. --type q8_0 or --type q8_0,q4_k_m")
    if len(set(types)) != len(types):
        raise ConfigError(f"--type {qtype} names a type twice", hint="list each type once")
    for one in types:
        check_type(one)
    return types


def base_config_of_run(folder: Path) -> tuple[str, dict[str, Any]] | None:
    """(where, config) of the base a run folder merges into, when it is on disk; None for a hub id not cached."""
    from lorakit.runs import base_source_of, read_run

    base = base_source_of(read_run(folder))
    config = Path(base.location) / "config.json"
    if base.is_local and config.is_file():
        return base.name, read_json(config, ModelError)
    return None


def check_gguf_source(source: Path, verify: bool) -> None:
    """Before any work (a merge included): the converter converts this architecture, and something here reads it."""
    from lorakit.export.gguf_converter import plan_conversion
    from lorakit.export.gguf_verify import check_verifiable

    if is_adapter_run(source):
        found = base_config_of_run(source)
        if found is None:
            return
        where, config = found
    else:
        where, config = str(source), read_json(source / "config.json", ModelError) \
            if (source / "config.json").is_file() else None
        if config is None:
            return  # check_source names what is missing
    plan = plan_conversion(Path(where), config)
    if verify:
        check_verifiable(plan.gguf_arch, plan.hf_arch)


def run_quantize(source: str | Path, fmt: str = "gguf", qtype: str | None = "q8_0",
                 output_dir: str | Path | None = None, force: bool = False, verify: bool = True,
                 modelfile: bool = True) -> QuantizeResult:
    """One export (the first when --type lists several GGUF types)."""
    return run_quantize_targets(source, fmt, qtype, output_dir, force, verify, modelfile)[0]


def run_quantize_targets(source: str | Path, fmt: str = "gguf", qtype: str | None = "q8_0",
                         output_dir: str | Path | None = None, force: bool = False, verify: bool = True,
                         modelfile: bool = True) -> list[QuantizeResult]:
    """Every export `--type` asks for, one verified folder each, from one merge (and, for GGUF, one conversion)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.logit_gap import logits_for, sample_token_ids

    source = Path(source)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", hint="--format gguf")
    if fmt in ("awq", "gptq"):
        raise ResourceError(NOT_HERE.format(fmt=fmt.upper()),
                            hint="use --format bnb-4bit (vLLM serves it with the vllm-bnb-plugin) or gguf")
    types: list[str | None] = list(gguf_types(qtype)) if fmt == "gguf" else [None]
    if output_dir is not None and len(types) > 1:
        raise ConfigError(f"--output-dir names one folder but --type lists {len(types)} types",
                          hint="leave --output-dir out: each type gets its own folder, <source>-gguf-<type>")
    inputs = [source]
    stem = source
    if source.is_dir() and is_adapter_run(source):
        stem = merged_folder(source)
        inputs.append(stem)
    targets = [Path(output_dir) if output_dir is not None else default_output(stem, fmt, kind) for kind in types]
    for target in targets:
        check_can_write(target, force, inputs=inputs)
    if fmt == "gguf" and source.is_dir():
        check_gguf_source(source, verify)
    if stem != source:
        source = merged_source(source, force)
    check_source(source)
    for target in targets:
        check_can_write(target, force, inputs=inputs)
    check_disk(source, targets[0], (1.2 if fmt == "gguf" else 0.6) * len(targets))

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    samples, origin, source_logits = [], "", None
    if verify:
        samples, origin = sample_token_ids(source, tokenizer)
        with err.status("Scoring the source model..."):
            reference = AutoModelForCausalLM.from_pretrained(str(source), dtype="float32").eval()
            source_logits = logits_for(reference, samples)
            del reference
    shared = dict(source=source, tokenizer=tokenizer, samples=samples, origin=origin, source_logits=source_logits,
                  force=force, inputs=inputs, modelfile=modelfile)
    if fmt != "gguf":
        return [_export_bnb(fmt, targets[0], **shared)]
    from lorakit.export.gguf_export import GGUFConversion

    progress = _progress_writer("{task.description}")
    with progress, GGUFConversion(source, targets[0].parent, _progress_callback(progress)) as conversion:
        return [_export_gguf(kind, target, conversion, **shared) for kind, target in zip(types, targets)]


def _progress_callback(progress):
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done, total=total)
    return update


def _write_gguf(conversion, staging: Path, name: str, qtype: str):
    """The GGUF file itself (a named step: the kill -9 tests stop the process right after it)."""
    result = conversion.write(qtype, staging / name)
    if result.fallbacks:
        warn(f"{len(result.fallbacks)} tensor(s) kept in f16 (rows not divisible into {qtype} blocks)")
    return result


def _export_gguf(qtype: str, target: Path, conversion, *, source: Path, tokenizer, samples, origin, source_logits,
                 force: bool, inputs: list[Path], modelfile: bool) -> QuantizeResult:
    from lorakit.export.gguf_verify import problems, verify_gguf
    from lorakit.export.verify import KL_TOLERANCE

    name = f"model-{qtype}.gguf"
    modelfile_text = family = None
    if modelfile:
        from lorakit.export.modelfile import modelfile as make_modelfile

        modelfile_text, family = make_modelfile(name, None, system_prompt_of(source), tokenizer)
    files = [name]
    verification: dict[str, Any] = {}
    with atomic_dir(target, force=force, inputs=inputs) as staging:
        result = _write_gguf(conversion, staging, name, qtype)
        if modelfile_text:
            write_text_atomic(staging / "Modelfile", modelfile_text)
            files.append("Modelfile")
        if source_logits is not None:
            with err.status(f"Verifying {name} against its source..."):
                verification = verify_gguf(staging / name, source, samples, source_logits, tokenizer)
            verification.update(samples=origin, tolerance_kl=KL_TOLERANCE[qtype])
            found = problems(verification, KL_TOLERANCE[qtype], qtype)
            if found:
                raise ModelError(f"the export does not match its source: {'; '.join(found)}; nothing was written",
                                 hint="try a higher-precision type (q8_0, f16)")
        runtimes = verified_runtimes("gguf", verification)
        write_text_atomic(staging / "README.md", export_readme(target, files, source, "gguf", qtype, runtimes))
        sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        manifest = {
            "stage": "quantize", "status": "complete", "created_at": now(), "source": str(source.resolve()),
            "format": "gguf", "type": qtype, "files": files, "sizes": sizes, "template_family": family,
            "gguf": {"architecture": result.arch, "converter": converter_record(), "tokenizer": result.vocab,
                     "f16_fallbacks": result.fallbacks},
            "verification": verification or None, "verified_runtimes": runtimes,
            "versions": package_versions(),
        }
        write_json_atomic(staging / MANIFEST_FILE, manifest)
    return _finish(target, "gguf", qtype, files, sizes, verification, runtimes)


def converter_record() -> dict[str, str]:
    from lorakit.export.gguf_converter import PACKAGE, SHA256, VERSION

    return {"package": PACKAGE, "version": VERSION, "sha256": SHA256}


def _export_bnb(fmt: str, target: Path, *, source: Path, tokenizer, samples, origin, source_logits, force: bool,
                inputs: list[Path], modelfile: bool) -> QuantizeResult:
    from lorakit.export.bnb import write_bnb
    from lorakit.export.verify import KL_TOLERANCE

    del modelfile
    verification: dict[str, Any] = {}
    with atomic_dir(target, force=force, inputs=inputs) as staging:
        write_bnb(source, staging, fmt, TOKENIZER_FILES)
        files = sorted(p.name for p in staging.iterdir())
        if source_logits is not None:
            with err.status("Verifying the export against its source..."):
                verification = _verify_bnb(staging, samples, source_logits)
            verification.update(samples=origin, tolerance_kl=KL_TOLERANCE[fmt])
            if verification["mean_kl"] > KL_TOLERANCE[fmt]:
                raise ModelError(f"the export does not match its source: mean KL {verification['mean_kl']:.3g} > "
                                 f"{KL_TOLERANCE[fmt]:g} for {fmt}; nothing was written",
                                 hint="try --format bnb-8bit")
        runtimes = verified_runtimes(fmt, verification)
        write_text_atomic(staging / "README.md", export_readme(target, files, source, fmt, None, runtimes))
        sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        manifest = {
            "stage": "quantize", "status": "complete", "created_at": now(), "source": str(source.resolve()),
            "format": fmt, "type": None, "files": files, "sizes": sizes, "template_family": None,
            "verification": verification or None, "verified_runtimes": runtimes,
            "versions": package_versions(),
        }
        write_json_atomic(staging / MANIFEST_FILE, manifest)
    return _finish(target, fmt, None, files, sizes, verification, runtimes)


def _finish(target: Path, fmt: str, qtype: str | None, files: list[str], sizes: dict[str, int],
            verification: dict[str, Any], runtimes: list[str]) -> QuantizeResult:
    summary = {"output": str(target), "format": fmt, "type": qtype,
               "size_mb": round(sum(v for k, v in sizes.items() if k in files) / 1e6, 2),
               "verified_runtimes": runtimes}
    for key in ("mean_kl", "top1_agreement", "max_abs_logit_diff", "perplexity_delta", "max_rel_rms_error"):
        if key in verification:
            summary[key] = verification[key]
    if verification.get("tokenization"):
        summary["tokenization_mismatches"] = verification["tokenization"]["mismatches"]
    if verification.get("llama_cpp"):
        summary["llama_cpp_mean_kl"] = verification["llama_cpp"]["mean_kl"]
    info(f"Export written to {target}")
    return QuantizeResult(target, files, summary)


def _verify_bnb(staging: Path, samples, source_logits) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from lorakit.compat import INT8_CAST_LOGGER
    from lorakit.export.verify import compare_models
    from lorakit.logit_gap import logits_for
    from lorakit.model import keep_4bit_layout_on_cpu

    exported = keep_4bit_layout_on_cpu(AutoModelForCausalLM.from_pretrained(str(staging))).eval()
    # LLM.int8 warns once per layer and forward that it casts bf16 inputs to fp16: hundreds of lines, nothing to act on
    int8_chatter = logging.getLogger(INT8_CAST_LOGGER)
    level = int8_chatter.level
    int8_chatter.setLevel(logging.ERROR)
    try:
        return compare_models(source_logits, logits_for(exported, samples), samples)
    finally:
        int8_chatter.setLevel(level)
