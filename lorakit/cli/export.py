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
    help="Quantize for deployment, verified against the source model: GGUF (+ Ollama Modelfile) for llama.cpp/"
    "Ollama/LM Studio; compressed-tensors W4A16, W8A8 or FP8 that vLLM, SGLang and TGI load natively; or serialized "
    "bitsandbytes. Several targets write several folders from one merge.\n\n"
    "Examples:\n\n  lorakit quantize out/dpo-merged --format gguf --type q8_0      # -> out/dpo-merged-gguf-q8_0\n\n"
    "  lorakit quantize out/dpo --format gguf --type q4_0        # a run folder: merged first\n\n"
    "  lorakit quantize out/dpo-merged --type q8_0,q4_k_m         # -> out/dpo-merged-gguf-q8_0, ...-gguf-q4_k_m\n\n"
    "  lorakit quantize out/dpo-merged --format w4a16             # INT4 for vLLM, no calibration (rtn)\n\n"
    "  lorakit quantize out/dpo --format w4a16 --method gptq      # calibrated on the run's own chats\n\n"
    "  lorakit quantize out/dpo --target gguf-q8_0 --target gguf-q4_k_m --target w4a16-rtn",
)
def quantize(
    source: Annotated[Path, typer.Argument(help="A merged model folder, or an sft/dpo run folder (merged first).")],
    format: Annotated[Optional[str], typer.Option("--format", help="gguf (default), w4a16, w8a8, fp8, bnb-4bit or "
                                                  "bnb-8bit.")] = None,
    type_: Annotated[Optional[str], typer.Option("--type", help="quantize.type, a GGUF type as llama.cpp names it: "
                                                 "f16, bf16, q8_0 (default), q5_0, q5_1, q4_0, q4_1; q4_k_m, q5_k_m, "
                                                 "q6_k with lorakit\\[llama-cpp]. float16 and bfloat16 are accepted "
                                                 "as aliases. Several, comma-separated: a folder each.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="w4a16: rtn (default, no data), gptq or awq; "
                                                  "w8a8: rtn or gptq; fp8: dynamic. gptq/awq run llm-compressor in "
                                                  "an environment lorakit creates on first use.")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", help="FORMAT-TYPE/METHOD, repeatable: "
                                                         "gguf-q8_0, gguf-q4_k_m, w4a16-rtn, w4a16-gptq, w8a8-rtn, "
                                                         "fp8-dynamic, bnb-4bit. Instead of --format/--type/--method."
                                                         )] = None,
    calibration_data: Annotated[Optional[str], typer.Option("--calibration-data", help="GPTQ/AWQ: chats to "
                                                             "calibrate on (default: the run's training data).")] = None,
    calibration_rows: Annotated[int, typer.Option("--calibration-rows", help="GPTQ/AWQ: rows to calibrate on.")]
    = 256,
    output_dir: Annotated[Optional[str], typer.Option("--output-dir", "-o", help="The export folder (default "
                                                      "MERGED-LABEL); with several targets, the folder that holds "
                                                      "one per target.")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the checks against the source.")] = False,
    no_modelfile: Annotated[bool, typer.Option("--no-modelfile", help="Do not write an Ollama Modelfile.")] = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.export.calibration import CalibrationRequest
    from lorakit.export.quantize import quantize_targets, summaries
    from lorakit.export.targets import requested_targets

    targets = requested_targets(target, format, type_, method)
    results = quantize_targets(source, targets, output_dir, force, not no_verify, not no_modelfile,
                               CalibrationRequest(calibration_data, calibration_rows))
    summary = summaries(results)
    if isinstance(summary, dict) or json_out:
        print_run_summary("quantize", summary, json_out)
    else:
        for one in summary:
            print_run_summary(f"quantize: {one['target']}", one, False)


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
