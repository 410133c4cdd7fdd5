"""Exporting and serving: `merge`, `quantize`, `serve-info` (the commands that serve an output) and `export-base`
(a cached base written where a server can load it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import command
from lorakit.cli.options import ForceOpt, JsonOpt, OutputOpt
from lorakit.cli.output import print_run_summary


@command(
    "merge",
    help="Fold a run's adapter into its base and write a standalone model (measuring the merge gap).\n\n"
    "Examples:\n\n  lorakit merge out/dpo                      # -> out/dpo-merged\n\n"
    "  lorakit merge out/sft --dtype float16 --output-dir merged/\n\n"
    "  lorakit merge out/qlora-run --base original",
)
def merge(
    source: Annotated[Path, typer.Argument(help="Run folder (sft or dpo), or a PEFT adapter folder with --model.")],
    output_dir: OutputOpt = None,
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="merge.dtype: bfloat16, float16 or float32 (default bfloat16; float32 for a base unpacked "
                        "from a GGUF). bf16, fp16 and fp32 (train.precision's spelling) are accepted as aliases.")]
    = None,
    base: Annotated[str, typer.Option("--base", help="QLoRA runs: dequantized (exact, default) or original.")]
    = "dequantized",
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="e.g. 2GB, 500MB.")] = "2GB",
    model: Annotated[Optional[str], typer.Option("--model", help="Base model, for a bare adapter or a moved base.")]
    = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip measuring the merge gap.")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.config import merge_dtype
    from lorakit.export.merge import merge_run

    result = merge_run(source, output_dir, merge_dtype(dtype) if dtype else dtype, base, max_shard_size, force,
                       model, not no_verify)
    summary = {"output": str(result.path), "mode": result.mode, "dtype": result.dtype, **(result.gap or {})}
    print_run_summary("merge", summary, json_out)


@command(
    "quantize",
    help="Quantize for deployment: GGUF (+ Ollama Modelfile) for llama.cpp/Ollama/LM Studio, or serialized "
    "bitsandbytes for transformers/vLLM; always verified against the source model.\n\n"
    "Examples:\n\n  lorakit quantize out/dpo-merged --format gguf --type q8_0\n\n"
    "  lorakit quantize out/dpo --format gguf --type q4_0        # a run folder: merged first\n\n"
    "  lorakit quantize out/dpo-merged --format bnb-4bit",
)
def quantize(
    source: Annotated[Path, typer.Argument(help="A merged model folder, or an sft/dpo run folder (merged first).")],
    format: Annotated[str, typer.Option("--format", help="gguf, bnb-4bit or bnb-8bit (awq/gptq: see docs/quantize.md).")]
    = "gguf",
    type_: Annotated[str, typer.Option("--type", help="quantize.type, a GGUF type as llama.cpp names it: f16, bf16, "
                                                      "q8_0, q5_0, q5_1, q4_0, q4_1; q4_k_m, q5_k_m, q6_k with "
                                                      "lorakit\\[llama-cpp]. float16 and bfloat16 are accepted as "
                                                      "aliases.")] = "q8_0",
    output_dir: OutputOpt = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the checks against the source.")] = False,
    no_modelfile: Annotated[bool, typer.Option("--no-modelfile", help="Do not write an Ollama Modelfile.")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.config import gguf_type
    from lorakit.export.quantize import run_quantize

    result = run_quantize(source, format, gguf_type(type_), output_dir, force, not no_verify, not no_modelfile)
    print_run_summary("quantize", result.summary, json_out)


@command(
    "serve-info",
    help="The exact commands that serve a run, a merged model or an export in vLLM, llama.cpp's llama-server, "
    "Ollama and transformers (paths, LoRA rank, chat template and stop tokens of this artifact).\n\n"
    "Examples:\n\n  lorakit serve-info out/tiny-pipeline/sft\n\n"
    "  lorakit serve-info out/tiny-pipeline/sft out/tiny-pipeline/dpo      # both adapters on one vLLM server\n\n"
    "  lorakit serve-info out/tiny-pipeline/merged --json\n\n"
    "  lorakit serve-info out/tiny-pipeline/export\n\n"
    "  lorakit serve-info out/sft --base bases/tiny-llama                  # after lorakit export-base",
)
def serve_info(
    paths: Annotated[list[Path], typer.Argument(help="A run folder (or several on one base), merged model or export.")],
    base: Annotated[Optional[str], typer.Option("--base", help="Adapter runs: the base's folder, if it is not where "
                                                "the run was trained (e.g. written by lorakit export-base).")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import print_json
    from lorakit.export.serve_info import render
    from lorakit.export.serve_info import serve_info as describe_serving

    info = describe_serving(paths, base)
    if json_out:
        print_json(info)
    else:
        render(info)


@command(
    "export-base",
    help="Write a base that exists only in lorakit's cache (a built-in model such as builtin:tiny-llama, or a GGUF "
    "file unpacked for training) into a folder of your choice, so a server elsewhere can load the adapters trained "
    "on it (the same files as the cached copy).\n\n"
    "Examples:\n\n  lorakit export-base builtin:tiny-llama bases/tiny-llama\n\n"
    "  lorakit export-base out/tiny-pipeline/sft bases/tiny-llama      # the base of that run\n\n"
    "  lorakit export-base out/smollm2-pipeline/sft bases/smollm2       # a run on a .gguf: its unpacked base",
)
def export_base(
    source: Annotated[str, typer.Argument(help="builtin:NAME, or a run folder trained on one or on a GGUF file.")],
    output_dir: Annotated[Path, typer.Argument(help="Folder to write.")],
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import info
    from lorakit.export.base import export_base as write_base

    name, target = write_base(source, output_dir, force)
    if not json_out:
        info(f"Serve adapters trained on {name} with it: lorakit serve-info RUN --base {target}")
    print_run_summary("export-base", {"base": name, "output": str(target)}, json_out)
