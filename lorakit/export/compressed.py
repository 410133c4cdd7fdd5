"""compressed-tensors quantize targets: INT4 weight-only (W4A16), INT8 weights and activations (W8A8) and FP8 (W8A8
with FP8 numbers), the checkpoints llm-compressor writes and vLLM, SGLang and TGI load natively (`vllm serve DIR`,
no --quantization flag).

Data-free methods run here, in lorakit's environment, through the compressed-tensors library itself:
- w4a16-rtn: 4-bit symmetric integer weights, one scale per group of 128 input columns (64 or 32 where the model's
  widths are not multiples of 128, as SmolLM2's 576 is not), rounded to nearest; 16-bit activations.
- w8a8-rtn: 8-bit integer weights with one scale per output channel; activations quantized per token at run time
  (dynamic), so no calibration is needed.
- fp8-dynamic: FP8 (e4m3) weights per output channel, FP8 activations per token at run time.
GPTQ and AWQ (w4a16-gptq, w4a16-awq, w8a8-gptq) calibrate on rows of the run's own training data with llm-compressor,
in the environment lorakit manages for it (lorakit.export.llmcompressor_env).

Every linear layer of the decoder is quantized; the output head (lm_head), the embeddings, norms, MoE routers and
anything that is not an nn.Linear (fused 3-D expert weights) stay in 16 bits and are listed in the manifest and
README. The written folder is reloaded with transformers on the CPU and its logits compared with the merged source.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.console import err, info
from lorakit.errors import ModelError
from lorakit.export import llmcompressor_env
from lorakit.export.calibration import CalibrationRequest, CalibrationRows, calibration_rows
from lorakit.export.logit_gap import logits_for
from lorakit.export.serve_info import Artifact, eos_list, markdown, serve_commands
from lorakit.export.targets import GPUS, MIN_CAPABILITY, Target
from lorakit.export.verify import compare_models
from lorakit.export.writing import (
    ExportContext,
    QuantizeResult,
    checked_line,
    copy_tokenizer_files,
    finish,
    refuse_if_off,
    written,
)
from lorakit.io import atomic_dir

SCHEMES = {"w4a16": "W4A16", "w8a8": "W8A8", "fp8": "FP8_DYNAMIC"}  # compressed-tensors preset names
GROUP_SIZES = (128, 64, 32)  # W4A16 group sizes vLLM's Marlin kernels take, largest first
ALIGNMENT = 16  # vLLM's CUTLASS scaled-mm kernels (INT8 and FP8) need both widths to be multiples of 16
# mean KL(source || export) per token above which an export is refused. Measured on the trained tiny model (bundled
# tiny-llama after SFT, hidden 128): w4a16-rtn 0.199 (group 32), w8a8-rtn 3.4e-3, fp8-dynamic 0.025; the same exports
# with every scale 1.5x off measure 0.85 (w4a16) and 0.79 (w8a8). SmolLM2-135M (fp32 merge from its Q4_1 GGUF)
# measured w8a8-rtn 0.088 (per-token INT8 activations on a 135M model) and w4a16-rtn 0.71 (refused: docs/vllm-export.md).
# The 8-bit formats' bound admits the small real model and stays 5x below a broken export.
KL_TOLERANCE = {"w4a16": 0.4, "w8a8": 0.15, "fp8": 0.15}
ROUTER_SUFFIXES = ("mlp.gate", "mlp.router", "block_sparse_moe.gate", "router")
DISK_FACTOR = 0.6


@dataclass
class Plan:
    """What one compressed-tensors target does to this model, decided from its config before any weight loads."""

    scheme: str
    group_size: int | None
    dtype: str  # the 16-bit dtype of what stays unquantized (and of the scales)
    quantized: list[str] = field(default_factory=list)  # nn.Linear module names
    kept: dict[str, str] = field(default_factory=dict)  # module or parameter -> why it stays 16-bit
    small_vectors: int = 0  # norms and biases (1-D): stay as they are
    ignore: list[str] = field(default_factory=list)  # the nn.Linear layers the checkpoint's config names as left alone

    def record(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "group_size": self.group_size, "dtype": self.dtype,
                "quantized_layers": len(self.quantized), "unquantized": dict(self.kept),
                "unquantized_vectors": self.small_vectors}


def export_dtype(config: dict[str, Any]) -> str:
    """The source's own 16-bit dtype, or bfloat16 for a float32 source (a GGUF-based merge)."""
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
    return dtype if dtype in ("bfloat16", "float16") else "bfloat16"


def skeleton(config_folder: Path):
    """The model's modules on the meta device: shapes without weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(config_folder))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def plan(config_folder: Path, target: Target) -> Plan:
    """Which layers this target quantizes, at which group size, and why the rest stays 16-bit; ModelError when a
    layer has a shape the format's kernels cannot take."""
    import torch

    config = json.loads((config_folder / "config.json").read_text())
    model = skeleton(config_folder)
    result = Plan(SCHEMES[target.format], None, export_dtype(config))
    linear_params: set[str] = set()
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        linear_params.update(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
        if module is output or name.endswith("lm_head"):
            result.kept[name] = "output head: stays 16-bit (as llm-compressor and vLLM leave it)"
            result.ignore.append(name)
        elif name.endswith(ROUTER_SUFFIXES):
            result.kept[name] = "MoE router: tiny and precision-critical, stays 16-bit"
            result.ignore.append(name)
        else:
            result.quantized.append(name)
    for name, param in model.named_parameters():
        if name in linear_params:
            continue
        if param.dim() < 2:
            result.small_vectors += 1
        elif "embed" in name:
            result.kept[name] = "embedding table: looked up, not multiplied; stays 16-bit"
        elif name.removesuffix(".weight").endswith(ROUTER_SUFFIXES):
            result.kept[name] = "MoE router: tiny and precision-critical, stays 16-bit"
        else:
            result.kept[name] = f"{param.dim()}-D weight outside an nn.Linear (fused MoE experts): stays 16-bit"
    if not result.quantized:
        raise ModelError(f"{config_folder}: no linear layer to quantize for {target.label}",
                         hint="use --format gguf for this architecture")
    shapes = {name: (m.in_features, m.out_features) for name, m in model.named_modules() if name in result.quantized}
    if target.format == "w4a16":
        result.group_size = choose_group_size(shapes, config_folder)
    else:
        misfit = [(n, s) for n, s in shapes.items() if s[0] % ALIGNMENT or s[1] % ALIGNMENT]
        if misfit:
            name, (fan_in, fan_out) = misfit[0]
            raise ModelError(f"{target.format} needs every quantized layer's widths to be multiples of {ALIGNMENT} "
                             f"(vLLM's {'FP8' if target.format == 'fp8' else 'INT8'} kernels); {name} is "
                             f"{fan_in} -> {fan_out} ({len(misfit)} layer(s) do not fit)",
                             hint="use --format w4a16 or gguf for this model")
    return result


def choose_group_size(shapes: dict[str, tuple[int, int]], where: Path) -> int:
    """128 where every input width is a multiple of it, else 64 or 32 (scales must tile each row exactly)."""
    for size in GROUP_SIZES:
        if all(fan_in % size == 0 for fan_in, _ in shapes.values()):
            return size
    name, (fan_in, _) = next((n, s) for n, s in shapes.items() if s[0] % GROUP_SIZES[-1])
    sizes = ", ".join(map(str, GROUP_SIZES))
    raise ModelError(f"w4a16 needs input widths divisible by a group size vLLM runs ({sizes}); {name} takes {fan_in} "
                     "inputs", hint="use --format w8a8 or gguf for this model")


# ---------------------------------------------------------------------------------------------------------------
# The dispatcher's interface


def check(targets: list[Target], config_folder: Path | None, verify: bool = True) -> None:
    """Before any work: shapes (when the config is at hand) and, for GPTQ/AWQ, lorakit's torch in llm-compressor's
    range."""
    if config_folder is not None:
        for target in targets:
            plan(config_folder, target)
    if any(t.calibrated for t in targets):
        llmcompressor_env.check_torch()


def prepare(ctx: ExportContext, targets: list[Target]) -> None:
    """Before any folder is written: each target's plan on the merged source itself (its shapes)."""
    for target in targets:
        ctx.prepared[target.label] = plan(ctx.source, target)


def export(ctx: ExportContext, jobs: list[tuple[Target, Path]]) -> list[QuantizeResult]:
    rows = None
    if any(t.calibrated for t, _ in jobs):
        rows = ctx.calibration if isinstance(ctx.calibration, CalibrationRows) else calibration_rows(
            ctx.source, ctx.tokenizer, ctx.calibration or CalibrationRequest())
    return [export_one(ctx, target, folder, rows if target.calibrated else None) for target, folder in jobs]


def export_one(ctx: ExportContext, target: Target, folder: Path, rows: CalibrationRows | None) -> QuantizeResult:
    source = ctx.source
    layout = ctx.prepared.get(target.label) or plan(source, target)
    if layout.group_size and layout.group_size != GROUP_SIZES[0]:
        info(f"{target.label}: group size {layout.group_size} (some input widths are not multiples of "
             f"{GROUP_SIZES[0]})")
    verification: dict[str, Any] = {}
    with atomic_dir(folder, force=ctx.force, inputs=ctx.inputs) as staging:
        started = time.time()
        extra: dict[str, Any] = {}
        if target.calibrated:
            extra["llmcompressor"] = quantize_calibrated(source, staging, target, layout, rows)
        else:
            quantize_data_free(source, staging, target, layout)
        copy_tokenizer_files(source, staging)
        files = sorted(p.name for p in staging.iterdir() if p.is_file())
        seconds = round(time.time() - started, 1)
        if ctx.verify:
            samples, origin, source_logits = ctx.reference()
            with err.status("Verifying the export against its source (transformers, CPU)..."):
                verification = verify(staging, samples, source_logits)
            verification.update(samples=origin, tolerance_kl=KL_TOLERANCE[target.format])
            refuse_if_off(target, verification, KL_TOLERANCE[target.format],
                          hint="try a higher-precision format (w8a8, fp8) or a calibrated method (--method gptq)")
        runtimes = ["transformers"] if verification else []
        fields = {"method": target.method, **layout.record(), "seconds": seconds,
                  "calibration": rows.record() if rows else None, **extra,
                  "vllm": {"command": f"vllm serve {folder.resolve()}", "min_compute_capability":
                           MIN_CAPABILITY[target.format], "gpus": GPUS[target.format]}}
        readme = export_readme(folder, source, target, layout, rows, runtimes, verification)
        outcome = finish(staging, folder, target, ctx, files, verification, runtimes, readme, fields)
    outcome.summary["group_size"] = layout.group_size
    outcome.summary["unquantized"] = sorted(layout.kept)
    written(folder)
    return outcome


# ---------------------------------------------------------------------------------------------------------------
# Writing


def quantize_data_free(source: Path, staging: Path, target: Target, layout: Plan) -> None:
    """Round to nearest with compressed-tensors: attach the scheme, set each weight's scales from its own range
    (per group, channel or tensor, as the scheme says), compress and save."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from transformers import AutoModelForCausalLM

    with err.status(f"Quantizing to {target.label} (compressed-tensors, no calibration)..."):
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=getattr(torch, layout.dtype)).eval()
        scheme = preset_name_to_scheme(layout.scheme, ["Linear"])
        if layout.group_size:
            scheme.weights.group_size = layout.group_size
        config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=layout.ignore,
                                    quantization_status=QuantizationStatus.INITIALIZED)
        apply_quantization_config(model, config)
        with torch.no_grad():
            for module in model.modules():
                if getattr(module, "quantization_scheme", None) is not None:
                    set_weight_scales(module)
                    module.quantization_status = QuantizationStatus.FROZEN
        compressor = ModelCompressor.from_pretrained_model(model)
        compressor.compress_model(model)
        model.save_pretrained(str(staging))
        compressor.update_config(str(staging))


def set_weight_scales(module) -> None:
    """Min/max of the weight per quantization block -> scale and zero point (what llm-compressor's memoryless
    min-max observer does for RTN)."""
    import torch
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.utils import calculate_qparams

    args = module.quantization_scheme.weights
    weight = module.weight.detach().float()
    if args.strategy == QuantizationStrategy.TENSOR:
        low, high = torch.aminmax(weight)
    elif args.strategy == QuantizationStrategy.CHANNEL:
        low, high = weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    elif args.strategy == QuantizationStrategy.GROUP:
        groups = weight.unflatten(-1, (weight.shape[-1] // args.group_size, args.group_size))
        low, high = groups.amin(-1), groups.amax(-1)
    else:
        raise ModelError(f"quantization strategy {args.strategy} is not data-free", hint="use --method gptq")
    scale, zero_point = calculate_qparams(low, high, args)
    module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
    if getattr(module, "weight_zero_point", None) is not None:
        module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape)
                                            .to(module.weight_zero_point.dtype))


def quantize_calibrated(source: Path, staging: Path, target: Target, layout: Plan,
                        rows: CalibrationRows) -> dict[str, Any]:
    """GPTQ / AWQ through llm-compressor in its own environment; the folder it writes is checked here after."""
    job = {"source": str(source.resolve()), "scheme": layout.scheme, "method": target.method,
           "group_size": layout.group_size, "ignore": layout.ignore, "rows": rows.rows, "dtype": layout.dtype,
           "output": str(staging.resolve())}
    work = Path(tempfile.mkdtemp(prefix="lorakit-llmcompressor-"))
    try:
        with err.status(f"Calibrating {target.label} on {len(rows.rows)} rows with llm-compressor "
                        f"(log: {work / 'llmcompressor.log'})..."):
            result = llmcompressor_env.run_job(job, work)
    except ModelError:
        raise  # the log stays in `work`, named in the error
    shutil.rmtree(work, ignore_errors=True)
    (staging / "recipe.yaml").unlink(missing_ok=True)  # llm-compressor's own record; the manifest holds ours
    if not json.loads((staging / "config.json").read_text()).get("quantization_config"):
        raise ModelError("llm-compressor wrote no quantization_config", hint="try --method rtn")
    versions = llmcompressor_env.describe()
    return {"environment": str(llmcompressor_env.env_dir()), "seconds": result.get("seconds"),
            "device": result.get("device"), "versions": versions.get("llm-compressor env versions")}


# ---------------------------------------------------------------------------------------------------------------
# Checking


def verify(staging: Path, samples, source_logits) -> dict[str, Any]:
    """Reload through transformers' compressed-tensors loader on the CPU (weights decompressed on the fly,
    activations quantized as the scheme says) and compare with the source."""
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(staging), device_map="cpu").eval()
    figures = compare_models(source_logits, logits_for(exported, samples), samples)
    del exported
    if not all(math.isfinite(figures[k]) for k in ("mean_kl", "max_abs_logit_diff")):
        raise ModelError("the export's logits are not finite; nothing was written", hint="try --format w8a8 or gguf")
    return figures


def export_readme(folder: Path, source: Path, target: Target, layout: Plan, rows: CalibrationRows | None,
                  runtimes: list[str], verification: dict[str, Any]) -> str:
    folder = folder.resolve()
    what = {"w4a16": "4-bit integer weights, 16-bit activations",
            "w8a8": "8-bit integer weights, 8-bit integer activations (dynamic, per token)",
            "fp8": "FP8 (e4m3) weights per channel, FP8 activations (dynamic, per token)"}[target.format]
    lines = [f"# {source.name} ({target.label})", "",
             f"compressed-tensors checkpoint of `{source}`, written by lorakit: {layout.scheme}, {what}"
             + (f", group size {layout.group_size}" if layout.group_size else "") + f", method {target.method}"
             + (f", calibrated on {len(rows.rows)} rows of {rows.origin}" if rows else " (no calibration)") + ".", "",
             f"vLLM, SGLang and TGI load it as it is: `vllm serve {folder}` (no --quantization flag). "
             f"GPUs: {GPUS[target.format]}.", ""]
    if verification:
        lines += [f"Compared with its source: mean KL {verification['mean_kl']:.3g} (tolerance "
                  f"{KL_TOLERANCE[target.format]:g}), top-1 agreement {verification['top1_agreement']:.3f}, "
                  f"max logit difference {verification['max_abs_logit_diff']:.3g}.", ""]
    lines += ["Left in 16 bits:", ""] + [f"- `{name}`: {why}" for name, why in layout.kept.items()]
    lines += [f"- {layout.small_vectors} norm and bias vectors", ""]
    artifact = Artifact("compressed-tensors", folder, folder.name, source=source.resolve(), eos=eos_list(folder)
                        or eos_list(source), method=target.label, verified_runtimes=runtimes)
    return "\n".join(lines) + "\n" + checked_line(runtimes) + markdown(serve_commands(artifact)).lstrip("\n")
