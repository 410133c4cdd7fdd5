"""What every quantize target shares: the source it reads, its reference logits, the tolerance check, and the
README + manifest.json every export folder ends with.

The per-format exporters (gguf_target, bnb, compressed) write their files into a staging folder and measure their
figures; this module turns those into one verified folder. The source's reference logits are computed once per
command, however many targets read them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.config import Target
from lorakit.console import err, info
from lorakit.errors import ModelError, ResourceError
from lorakit.export.logit_gap import logits_for, sample_token_ids
from lorakit.io import write_text_atomic
from lorakit.outputs import ExportManifest, now, package_versions, training_run_behind, write_manifest
from lorakit.outputs.layout import README_FILE

# What an export that is a transformers folder (bitsandbytes, compressed-tensors) copies from its source so it loads
# and chats the same.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")
# The figures a quantize summary shows (the manifest keeps every one under `verification`).
SUMMARY_FIGURES = ("mean_kl", "top1_agreement", "max_abs_logit_diff", "perplexity_delta", "max_rel_rms_error")


@dataclass
class QuantizeResult:
    path: Path
    files: list[str]
    summary: dict[str, Any]


@dataclass
class ExportContext:
    """One quantize command: its 16-bit source, tokenizer and options, shared by every target it writes."""

    source: Path
    tokenizer: Any
    verify: bool = True
    force: bool = False
    inputs: list[Path] = field(default_factory=list)
    modelfile: bool = True
    calibration: Any = None  # lorakit.export.calibration.CalibrationRows for GPTQ/AWQ targets
    prepared: dict[str, Any] = field(default_factory=dict)  # what each format's prepare() decided before any work
    _reference: tuple | None = None

    def reference(self) -> tuple[list[list[int]], str, list[Any]]:
        """(samples, where they came from, the source's fp32 logits on them), computed on first use."""
        if self._reference is None:
            from transformers import AutoModelForCausalLM

            samples, origin = sample_token_ids(self.source, self.tokenizer)
            with err.status("Scoring the source model for verification..."):
                model = AutoModelForCausalLM.from_pretrained(str(self.source), dtype="float32").eval()
                logits = logits_for(model, samples)
                del model
            self._reference = (samples, origin, logits)
        return self._reference


def check_disk(folder: Path, target: Path, factor: float) -> None:
    need = sum(f.stat().st_size for f in folder.glob("*.safetensors")) * factor
    free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
    if free < need:
        raise ResourceError(f"not enough disk for {target}: needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free",
                            hint="free some space or pass --output-dir on another disk")


def copy_tokenizer_files(source: Path, staging: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)


def system_prompt_of(folder: Path) -> str | None:
    run = training_run_behind(folder)
    return run.recipe.data.system_prompt if run is not None else None


def refuse_if_off(target: Target, verification: dict[str, Any], tolerance: float, extra: list[str] = (),
                  hint: str = "try a higher-precision type (q8_0, f16)") -> None:
    """An export whose logits are further from its source than its format's tolerance is not kept."""
    problems = list(extra)
    if verification["mean_kl"] > tolerance and not any(p.startswith("mean KL") for p in problems):
        problems.insert(0, f"mean KL {verification['mean_kl']:.3g} > {tolerance:g} for {target.label}")
    if problems:
        raise ModelError(f"the export does not match its source: {'; '.join(problems)}; nothing was written",
                         hint=hint)


def checked_line(runtimes: list[str]) -> str:
    """The README's line on what verified the export."""
    return (f"Loaded and compared with its source here by: {', '.join(runtimes)} (manifest.json "
            "`verified_runtimes`, figures under `verification`).\n\n" if runtimes else
            "Not verified (written with --no-verify).\n\n")


def plain(value: Any) -> Any:
    """JSON's own types (numpy and torch scalars made Python numbers): what a strict manifest field takes."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def finish(staging: Path, folder: Path, target: Target, ctx: ExportContext, files: list[str],
           verification: dict[str, Any], runtimes: list[str], readme: str, fields: dict[str, Any]) -> QuantizeResult:
    """README.md and manifest.json into the staging folder (the caller's atomic_dir makes it `folder`).

    Manifest fields every export has: stage, status, created_at, source, target, format, type, method, files, sizes,
    verification, verified_runtimes, versions; `fields` adds the format's own (lorakit.outputs.manifest's
    ExportManifest lists them all)."""
    write_text_atomic(staging / README_FILE, readme)
    sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
    manifest = ExportManifest.model_validate(plain({
        "stage": "quantize", "status": "complete", "created_at": now(), "source": str(ctx.source.resolve()),
        "target": target.label, "format": target.format, "type": target.type, "files": files, "sizes": sizes,
        **({"method": target.method} if target.method else {}), **fields,
        "verification": verification or None, "verified_runtimes": runtimes, "versions": package_versions(),
    }))
    write_manifest(staging, manifest)
    summary = {"output": str(folder), "target": target.label, "format": target.format, "type": target.type,
               "size_mb": round(sum(v for k, v in sizes.items() if k in files) / 1e6, 2),
               "verified_runtimes": runtimes}
    if target.method:
        summary["method"] = target.method
    for key in SUMMARY_FIGURES:
        if key in verification:
            summary[key] = verification[key]
    if verification.get("tokenization"):
        summary["tokenization_mismatches"] = verification["tokenization"]["mismatches"]
    if verification.get("judged_by"):
        summary["judged_by"] = verification["judged_by"]
    if (verification.get("llama_cpp") or {}).get("mean_kl") is not None:
        summary["llama_cpp_mean_kl"] = verification["llama_cpp"]["mean_kl"]
    return QuantizeResult(folder, files, summary)


def written(folder: Path) -> None:
    info(f"Export written to {folder}")
