"""The GGUF quantize targets (gguf-q8_0, gguf-q4_k_m, ...): the file, its Ollama Modelfile, and the checks against
the source (tensors read back, logits through transformers' GGUF loader, tokenization, llama.cpp when installed).

Called by the dispatcher (lorakit.export.quantize) with every GGUF target of one command, so a shared intermediate
can serve several types.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from transformers import AutoModelForCausalLM

from lorakit.chat_template import read_stops
from lorakit.compat import route_gguf_loading_bar
from lorakit.config import Target
from lorakit.console import err, warn
from lorakit.export.gguf_export import K_TYPES, check_type, k_quantize, write_gguf
from lorakit.export.logit_gap import logits_for
from lorakit.export.modelfile import modelfile as make_modelfile
from lorakit.export.serve_info import Artifact, eos_list, markdown, serve_commands
from lorakit.export.verify import (
    KL_TOLERANCE,
    compare_models,
    llama_cpp_agreement,
    tensor_errors,
    tokenization_matches,
)
from lorakit.export.writing import (
    ExportContext,
    QuantizeResult,
    checked_line,
    finish,
    refuse_if_off,
    system_prompt_of,
    written,
)
from lorakit.gguf_source import import_tokenizer
from lorakit.io import atomic_dir, write_text_atomic

DISK_FACTOR = 1.2


def check(targets: list[Target], config_folder: Path | None) -> None:
    """Before any work: the types this machine can write (K-quants need llama.cpp's quantizer)."""
    for target in targets:
        check_type(target.type)


def prepare(ctx: ExportContext, targets: list[Target]) -> None:
    """The Ollama Modelfile of each type, before any folder is written (a template Ollama cannot express is an
    error naming why)."""
    if not ctx.modelfile:
        return
    stops = read_stops(ctx.tokenizer, ctx.source)
    for target in targets:
        # the source's generation_config.json lists every token that ends a reply (Llama 3.1's <|eom_id|> too)
        ctx.prepared[target.label] = make_modelfile(f"model-{target.type}.gguf", None, system_prompt_of(ctx.source),
                                                    ctx.tokenizer, stops)


def export(ctx: ExportContext, jobs: list[tuple[Target, Path]]) -> list[QuantizeResult]:
    return [export_one(ctx, target, folder) for target, folder in jobs]


def export_one(ctx: ExportContext, target: Target, folder: Path) -> QuantizeResult:
    qtype, source = target.type, ctx.source
    modelfile_text, family = ctx.prepared.get(target.label, (None, None))
    files: list[str] = []
    verification: dict[str, Any] = {}
    with atomic_dir(folder, force=ctx.force, inputs=ctx.inputs) as staging:
        name = f"model-{qtype}.gguf"
        result = _write_gguf(source, staging, name, qtype, ctx.tokenizer)
        files.append(name)
        if modelfile_text:
            write_text_atomic(staging / "Modelfile", modelfile_text)
            files.append("Modelfile")
        if ctx.verify:
            samples, origin, source_logits = ctx.reference()
            with err.status("Verifying the export against its source..."):
                verification = _verify(staging, name, samples, source_logits, ctx.tokenizer, result)
            verification.update(samples=origin, tolerance_kl=KL_TOLERANCE[qtype])
            problems = []
            tok = verification.get("tokenization")
            if tok and tok["mismatches"]:
                problems.append(f"tokenization differs on {tok['mismatches']} of {tok['texts']} sample chats")
            cpp = verification.get("llama_cpp")
            if cpp and cpp["top1_agreement"] < 0.9 * verification["top1_agreement"]:
                problems.append(f"llama.cpp's predictions disagree (top-1 {cpp['top1_agreement']:.3f})")
            refuse_if_off(target, verification, KL_TOLERANCE[qtype], problems)
        runtimes = verified_runtimes(verification)
        readme = export_readme(folder, files, source, target, runtimes)
        outcome = finish(staging, folder, target, ctx, files, verification, runtimes, readme,
                         {"template_family": family})
    written(folder)
    return outcome


def verified_runtimes(verification: dict[str, Any]) -> list[str]:
    """The runtimes that loaded this export and matched its source here (the manifest's record)."""
    if not verification:
        return []
    return ["transformers"] + (["llama.cpp"] if verification.get("llama_cpp") else [])


def export_readme(folder: Path, files: list[str], source: Path, target: Target, runtimes: list[str]) -> str:
    """The export's README: what it is, and the commands that serve it (lorakit.export.serve_info)."""
    folder = folder.resolve()
    name = files[0]
    head = f"# {name}\n\nGGUF ({target.type}) of `{source}`, written by lorakit.\n\n"
    artifact = Artifact("gguf", folder, folder.name, gguf_file=name, source=source.resolve(), eos=eos_list(source),
                        verified_runtimes=runtimes, modelfile="Modelfile" in files)
    return head + checked_line(runtimes) + markdown(serve_commands(artifact)).lstrip("\n")


def _write_gguf(source: Path, staging: Path, name: str, qtype: str, tokenizer):
    python_type = "f16" if qtype in K_TYPES else qtype
    first = staging / (".model-f16.gguf" if qtype in K_TYPES else name)
    progress = Progress(TextColumn(f"Writing GGUF ({python_type})"), BarColumn(), MofNCompleteColumn(), console=err,
                        transient=True)
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


def _verify(staging: Path, gguf_name: str, samples, source_logits, tokenizer, result) -> dict[str, Any]:
    route_gguf_loading_bar()
    exported = AutoModelForCausalLM.from_pretrained(str(staging), gguf_file=gguf_name, dtype="float32").eval()
    figures = compare_models(source_logits, logits_for(exported, samples), samples)
    del exported
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
