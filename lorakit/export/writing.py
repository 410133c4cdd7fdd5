"""What every quantize target shares: the source it reads, its reference logits, the tolerance check, and the
README + manifest.json every export folder ends with.

The per-format exporters (gguf_target, bnb, compressed) write their files into a staging folder and measure their
figures; this module turns those into one verified folder. The source's reference logits are computed once per
command, however many targets read them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.console import err, info
from lorakit.errors import ModelError, ResourceError
from lorakit.export.targets import Target
from lorakit.logit_gap import logits_for, sample_token_ids
from lorakit.runs import MANIFEST_FILE, now, package_versions, training_run_behind, write_json_atomic, write_text_atomic

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
    calibration: Any = None  # lorakit.export.calibration.CalibrationRequest for GPTQ/AWQ targets
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
    if verification["mean_kl"] > tolerance:
        problems.insert(0, f"mean KL {verification['mean_kl']:.3g} > {tolerance:g} for {target.label}")
    if problems:
        raise ModelError(f"the export does not match its source: {'; '.join(problems)}; nothing was written",
                         hint=hint)


def finish(staging: Path, folder: Path, target: Target, ctx: ExportContext, files: list[str],
           verification: dict[str, Any], runtimes: list[str], readme: str, fields: dict[str, Any]) -> QuantizeResult:
    """README.md and manifest.json into the staging folder (the caller's atomic_dir makes it `folder`).

    Manifest fields every export has: stage, status, created_at, source, target, format, type, files, sizes,
    verification, verified_runtimes, versions; `fields` adds the format's own (lorakit.export.compressed and
    gguf_target list theirs)."""
    write_text_atomic(staging / "README.md", readme)
    sizes = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
    manifest = {
        "stage": "quantize", "status": "complete", "created_at": now(), "source": str(ctx.source.resolve()),
        "target": target.label, "format": target.format, "type": target.type, "files": files, "sizes": sizes,
        **fields, "verification": verification or None, "verified_runtimes": runtimes,
        "versions": package_versions(),
    }
    write_json_atomic(staging / MANIFEST_FILE, manifest)
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
    return QuantizeResult(folder, files, summary)


def written(folder: Path) -> None:
    info(f"Export written to {folder}")
