"""`lorakit quantize`: a merged model (or a run, merged first) -> GGUF + Modelfile, or serialized bitsandbytes.

Every export is verified against its source before it is kept: tensors read back from the file, logits through
transformers' loader (GGUF included), tokenization of sample chats, and llama.cpp itself when installed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from lorakit.chat_template import read_stops
from lorakit.compat import INT8_CAST_LOGGER, route_gguf_loading_bar
from lorakit.console import err, info, warn
from lorakit.errors import ConfigError, LorakitError, ModelError, ResourceError, RunError
from lorakit.export.bnb import write_bnb
from lorakit.export.gguf_export import K_TYPES, check_type, k_quantize, write_gguf
from lorakit.export.logit_gap import logits_for, sample_token_ids
from lorakit.export.merge import merge_run
from lorakit.export.modelfile import modelfile as make_modelfile
from lorakit.export.serve_info import Artifact, eos_list, markdown, serve_commands
from lorakit.export.verify import KL_TOLERANCE, compare_models, llama_cpp_agreement, tensor_errors, tokenization_matches
from lorakit.gguf_source import import_tokenizer
from lorakit.io import atomic_dir, check_can_write, read_json, write_text_atomic
from lorakit.model import keep_4bit_layout_on_cpu
from lorakit.outputs import (
    ExportManifest,
    MergeManifest,
    Output,
    hold_output,
    now,
    open_output,
    package_versions,
    training_run_behind,
    write_manifest,
)
from lorakit.outputs.integrity import check_model_files
from lorakit.outputs.layout import README_FILE, export_folder, merged_folder

FORMATS = ("gguf", "bnb-4bit", "bnb-8bit", "awq", "gptq")
# What a bitsandbytes export copies from its source so it loads and chats the same.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")
NOT_HERE = ("{fmt} export needs llm-compressor (compressed-tensors W4A16), which pins transformers<=5.17 and so "
            "cannot share lorakit's environment, or GPTQModel, which installs a CUDA build of torch")


@dataclass
class QuantizeResult:
    path: Path
    files: list[str]
    summary: dict[str, Any]


def default_output(source: Path, fmt: str) -> Path:
    return export_folder(source, fmt)


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
    return merge_run(source, target, force=force).path


def check_source(folder: Path) -> dict[str, Any]:
    """A merged model quantize can read: its manifest (when it has one) reads and is a merge's, its files are whole,
    its config fits its weights, and it has a tokenizer."""
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
    runtimes = ["transformers"]
    if fmt == "gguf" and verification.get("llama_cpp"):
        runtimes.append("llama.cpp")
    return runtimes


def _progress_writer(total_label: str):
    progress = Progress(TextColumn(total_label), BarColumn(), MofNCompleteColumn(), console=err, transient=True)
    return progress


def run_quantize(source: str | Path, fmt: str = "gguf", qtype: str | None = "q8_0",
                 output_dir: str | Path | None = None, force: bool = False, verify: bool = True,
                 modelfile: bool = True) -> QuantizeResult:
    source = Path(source)
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", hint="--format gguf")
    if fmt in ("awq", "gptq"):
        raise ResourceError(NOT_HERE.format(fmt=fmt.upper()),
                            hint="use --format bnb-4bit (vLLM serves it with the vllm-bnb-plugin) or gguf")
    if qtype is not None and not qtype.strip():
        raise ConfigError("--type is empty", hint="give a GGUF type (q8_0, q4_k_m, f16...), or leave --type out for "
                                                  "q8_0")
    qtype = (qtype or "q8_0").lower() if fmt == "gguf" else None
    if fmt == "gguf":
        check_type(qtype)
    adapter_run = is_adapter_run(open_output(source))  # and a source another command is still writing is refused
    base = merged_folder(source) if adapter_run else source
    target = Path(output_dir) if output_dir is not None else default_output(base, fmt)
    with contextlib.ExitStack() as held:
        held.enter_context(hold_output(target, "lorakit quantize"))
        if adapter_run:  # the run is merged first, into its -merged folder: that one is written too
            held.enter_context(hold_output(merged_folder(source), "lorakit quantize"))
        return _quantize(source, fmt, qtype, target, force, verify, modelfile, adapter_run)


def _quantize(source: Path, fmt: str, qtype: str | None, target: Path, force: bool, verify: bool, modelfile: bool,
              adapter_run: bool) -> QuantizeResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    inputs = [source]
    if adapter_run:
        inputs.append(merged_folder(source))
        check_can_write(target, force, inputs=inputs)
        source = merged_source(source, force)
    check_source(source)
    check_can_write(target, force, inputs=inputs)
    check_disk(source, target, 1.2 if fmt == "gguf" else 0.6)

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    modelfile_text = family = None
    if fmt == "gguf" and modelfile:
        # the source's generation_config.json lists every token that ends a reply (Llama 3.1's <|eom_id|> too)
        modelfile_text, family = make_modelfile(f"model-{qtype}.gguf", None, system_prompt_of(source), tokenizer,
                                                read_stops(tokenizer, source))

    files: list[str] = []
    verification: dict[str, Any] = {}
    with atomic_dir(target, force=force, inputs=inputs) as staging:
        if fmt == "gguf":
            name = f"model-{qtype}.gguf"
            result = _write_gguf(source, staging, name, qtype, tokenizer)
            files.append(name)
            if modelfile_text:
                write_text_atomic(staging / "Modelfile", modelfile_text)
                files.append("Modelfile")
        else:
            write_bnb(source, staging, fmt, TOKENIZER_FILES)
            files += sorted(p.name for p in staging.iterdir())

        if verify:
            kind = qtype if fmt == "gguf" else fmt
            samples, origin = sample_token_ids(source, tokenizer)
            with err.status("Verifying the export against its source..."):
                reference = AutoModelForCausalLM.from_pretrained(str(source), dtype="float32").eval()
                source_logits = logits_for(reference, samples)
                del reference
                verification = _verify(staging, fmt, files[0] if fmt == "gguf" else None, samples, source_logits,
                                       tokenizer, result if fmt == "gguf" else None)
            verification.update(samples=origin, tolerance_kl=KL_TOLERANCE[kind])
            problems = []
            if verification["mean_kl"] > KL_TOLERANCE[kind]:
                problems.append(f"mean KL {verification['mean_kl']:.3g} > {KL_TOLERANCE[kind]:g} for {kind}")
            tok = verification.get("tokenization")
            if tok and tok["mismatches"]:
                problems.append(f"tokenization differs on {tok['mismatches']} of {tok['texts']} sample chats")
            cpp = verification.get("llama_cpp")
            if cpp and cpp["top1_agreement"] < 0.9 * verification["top1_agreement"]:
                problems.append(f"llama.cpp's predictions disagree (top-1 {cpp['top1_agreement']:.3f})")
            if problems:
                raise ModelError(f"the export does not match its source: {'; '.join(problems)}; nothing was written",
                                 hint="try a higher-precision type (q8_0, f16)")
        runtimes = verified_runtimes(fmt, verification)
        write_text_atomic(staging / README_FILE, export_readme(target, files, source, fmt, qtype, runtimes))
        sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        write_manifest(staging, ExportManifest(
            stage="quantize", status="complete", created_at=now(), source=str(source.resolve()), format=fmt,
            type=qtype, files=files, sizes=sizes, template_family=family, verification=verification or None,
            verified_runtimes=runtimes, versions=package_versions()))
    summary = {"output": str(target), "format": fmt, "type": qtype,
               "size_mb": round(sum(v for k, v in sizes.items() if k in files) / 1e6, 2),
               "verified_runtimes": runtimes}
    for key in ("mean_kl", "top1_agreement", "max_abs_logit_diff", "perplexity_delta", "max_rel_rms_error"):
        if key in verification:
            summary[key] = verification[key]
    if verification.get("tokenization"):
        summary["tokenization_mismatches"] = verification["tokenization"]["mismatches"]
    info(f"Export written to {target}")
    return QuantizeResult(target, files, summary)


def _write_gguf(source: Path, staging: Path, name: str, qtype: str, tokenizer):
    python_type = "f16" if qtype in K_TYPES else qtype
    first = staging / (".model-f16.gguf" if qtype in K_TYPES else name)
    progress = _progress_writer(f"Writing GGUF ({python_type})")
    with progress:
        task = progress.add_task("tensors", total=None)
        result = write_gguf(source, first, python_type, tokenizer,
                            lambda done, total: progress.update(task, completed=done, total=total))
    if result.fallbacks:
        warn(f"{len(result.fallbacks)} tensor(s) kept in f16 (rows not divisible into {qtype} blocks)")
    if qtype in K_TYPES:
        with err.status(f"Quantizing to {qtype} with llama.cpp..."):
            k_quantize(first, staging / name, qtype)
        first.unlink()
        result.path = staging / name
        result.type = qtype
    return result


def _verify(staging: Path, fmt: str, gguf_name: str | None, samples, source_logits, tokenizer, result) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    if fmt == "gguf":
        route_gguf_loading_bar()
        exported = AutoModelForCausalLM.from_pretrained(str(staging), gguf_file=gguf_name, dtype="float32").eval()
    else:
        exported = keep_4bit_layout_on_cpu(AutoModelForCausalLM.from_pretrained(str(staging))).eval()
    # LLM.int8 warns once per layer and forward that it casts bf16 inputs to fp16: hundreds of lines, nothing to act on
    int8_chatter = logging.getLogger(INT8_CAST_LOGGER)
    level = int8_chatter.level
    int8_chatter.setLevel(logging.ERROR)
    try:
        figures = compare_models(source_logits, logits_for(exported, samples), samples)
    finally:
        int8_chatter.setLevel(level)
    del exported
    if fmt == "gguf":
        figures.update(tensor_errors(result))
        # read back as lorakit unpacks a GGUF: transformers' rebuild, edited where it cuts text unlike llama.cpp
        with tempfile.TemporaryDirectory() as unpacked:
            gguf_tokenizer, _ = import_tokenizer(staging / gguf_name, Path(unpacked))
        texts = [tokenizer.decode(ids) for ids in samples]
        figures["tokenization"] = tokenization_matches(tokenizer, gguf_tokenizer, texts)
        cpp = llama_cpp_agreement(staging / gguf_name, samples, source_logits)
        if cpp is not None:
            figures["llama_cpp"] = cpp
    return figures
