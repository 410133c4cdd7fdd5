"""The GGUF quantize targets (gguf-q8_0, gguf-q4_k_m, ...): the file, its Ollama Modelfile, and the checks against
the source.

llama.cpp's official converter does the architecture mapping (lorakit.export.gguf_export, gguf_converter); every GGUF
target of one command is written from one conversion (the f16 intermediate serves every type derived from it).
Verification (lorakit.export.gguf_verify): transformers' GGUF reader where it reads the architecture, llama.cpp itself
when llama-cpp-python is installed, and the tokenizer rebuilt from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from lorakit.chat_template import read_stops
from lorakit.compat import route_gguf_loading_bar
from lorakit.config import Target
from lorakit.console import err, warn
from lorakit.errors import ModelError
from lorakit.export.gguf_converter import PACKAGE, SHA256, VERSION, plan_conversion
from lorakit.export.gguf_export import GGUFConversion, GGUFResult, check_type
from lorakit.export.gguf_verify import check_verifiable, judged_tolerance, problems, verify_gguf
from lorakit.export.modelfile import modelfile as make_modelfile
from lorakit.export.serve_info import Artifact, eos_list, markdown, serve_commands
from lorakit.export.verify import KL_TOLERANCE
from lorakit.export.writing import (
    ExportContext,
    QuantizeResult,
    checked_line,
    finish,
    refuse_if_off,
    system_prompt_of,
    written,
)
from lorakit.io import atomic_dir, read_json, write_text_atomic

DISK_FACTOR = 1.2


def check(targets: list[Target], config_folder: Path | None, verify: bool = True) -> None:
    """Before any work: the types this machine can write (K-quants need llama.cpp's quantizer), an architecture
    llama.cpp's converter converts, and a runtime here that can load the export to verify it."""
    for target in targets:
        check_type(target.type)
    if config_folder is None or not (config_folder / "config.json").is_file():
        return  # the source check names what is missing
    plan = plan_conversion(config_folder, read_json(config_folder / "config.json", ModelError))
    if verify:
        check_verifiable(plan.gguf_arch, plan.hf_arch)


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
    """Every GGUF target of the command from one conversion of the source (scratch files beside the first folder)."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                        transient=True)
    with progress, GGUFConversion(ctx.source, jobs[0][1].parent, progress_callback(progress)) as conversion:
        return [export_one(ctx, conversion, target, folder) for target, folder in jobs]


def progress_callback(progress: Progress) -> Callable[[str, int, int | None], None]:
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(label, total=total)
        progress.update(tasks[label], completed=done, total=total)
    return update


def export_one(ctx: ExportContext, conversion: GGUFConversion, target: Target, folder: Path) -> QuantizeResult:
    qtype, source = target.type, ctx.source
    modelfile_text, family = ctx.prepared.get(target.label, (None, None))
    name = f"model-{qtype}.gguf"
    files = [name]
    verification: dict[str, Any] = {}
    with atomic_dir(folder, force=ctx.force, inputs=ctx.inputs) as staging:
        result = _write_gguf(conversion, staging, name, qtype)
        if modelfile_text:
            write_text_atomic(staging / "Modelfile", modelfile_text)
            files.append("Modelfile")
        if ctx.verify:
            samples, origin, source_logits = ctx.reference()
            route_gguf_loading_bar()
            with err.status(f"Verifying {name} against its source..."):
                verification = verify_gguf(staging / name, source, samples, source_logits, ctx.tokenizer)
            tolerance = judged_tolerance(KL_TOLERANCE[qtype], verification["judged_by"])
            verification.update(samples=origin, tolerance_kl=tolerance)
            refuse_if_off(target, verification, tolerance, problems(verification, KL_TOLERANCE[qtype], qtype))
        runtimes = verified_runtimes(verification)
        readme = export_readme(folder, files, source, target, runtimes)
        gguf = {"architecture": result.arch, "converter": {"package": PACKAGE, "version": VERSION, "sha256": SHA256},
                "tokenizer": result.vocab, "f16_fallbacks": result.fallbacks}
        outcome = finish(staging, folder, target, ctx, files, verification, runtimes, readme,
                         {"template_family": family, "gguf": gguf})
    written(folder)
    return outcome


def verified_runtimes(verification: dict[str, Any]) -> list[str]:
    """The runtimes that loaded this export and matched its source here (the manifest's record): transformers when
    its reader judged the file (not when it failed or cannot read the architecture), llama.cpp when it ran it."""
    if not verification:
        return []
    return (["transformers"] if verification.get("judged_by") == "transformers" else []) + \
        (["llama.cpp"] if verification.get("llama_cpp") else [])


def export_readme(folder: Path, files: list[str], source: Path, target: Target, runtimes: list[str]) -> str:
    """The export's README: what it is, and the commands that serve it (lorakit.export.serve_info)."""
    folder = folder.resolve()
    name = files[0]
    head = f"# {name}\n\nGGUF ({target.type}) of `{source}`, written by lorakit.\n\n"
    artifact = Artifact("gguf", folder, folder.name, gguf_file=name, source=source.resolve(), eos=eos_list(source),
                        verified_runtimes=runtimes, modelfile="Modelfile" in files)
    return head + checked_line(runtimes) + markdown(serve_commands(artifact)).lstrip("\n")


def _write_gguf(conversion: GGUFConversion, staging: Path, name: str, qtype: str) -> GGUFResult:
    """The GGUF file itself (a named step: the kill -9 tests stop the process right after it)."""
    result = conversion.write(qtype, staging / name)
    if result.fallbacks:
        warn(f"{len(result.fallbacks)} tensor(s) kept in f16 (rows not divisible into {qtype} blocks)")
    return result
