"""Check the estimator against published measured peaks (a CSV with one run per row and its provenance).

Columns used: model, method, base_precision, compute_dtype, seq_len, micro_batch, grad_checkpointing, optimizer,
lora_r, lora_targets, attn_impl, extra, source, measured_peak_gb. Rows measured with nvidia-smi/NVML are compared
with the estimate's GPU total (context included); rows measured with torch.cuda.max_memory_allocated with its
allocated peak. GB in the CSV are 10^9 bytes unless the row says MiB.
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from lorakit.vram.catalog import find_model
from lorakit.vram.estimate import Estimate, Setup, estimate

_TARGETS = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
            "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


@dataclass
class CalibrationRow:
    index: int
    model: str
    setup: Setup
    metric: str  # allocated | total
    measured: float  # bytes
    estimate: Estimate
    source: str

    @property
    def predicted(self) -> float:
        return self.estimate.allocated if self.metric == "allocated" else self.estimate.total

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def setup_from_row(row: dict[str, str]) -> tuple[Setup, str]:
    text = {k: (v or "").lower() for k, v in row.items()}
    method = text["method"]
    base = text["base_precision"]
    stage = "sft"
    if method == "inference":
        stage = "inference"
        method = "qlora" if "nf4" in base else "full"
    dtype = "fp32" if text["compute_dtype"].startswith("fp32") else (
        "fp16" if text["compute_dtype"].startswith("fp16") else "bf16")
    mixed = "amp" in text["compute_dtype"] or "master" in base
    seq = re.match(r"~?(\d+)", text["seq_len"])
    optimizer = text["optimizer"]
    optimizer = ("paged-adamw" if "paged" in optimizer and "8bit" not in optimizer else
                 "adamw-8bit" if "8bit" in optimizer else "adafactor" if "adafactor" in optimizer else "adamw")
    targets = [_TARGETS.get(t.strip().split(" ")[0]) for t in text["lora_targets"].split("(")[0].split(",")]
    attn = "flash" if "flash" in text["attn_impl"] else "eager" if "eager" in text["attn_impl"] else "sdpa"
    extra = text["extra"]
    hf_stack = "fms-acceleration" in text["source"]
    loss = "plain"
    if "chunked ce" in extra or "fused-linear-cross-entropy" in extra:
        loss = "fused" if "fused-linear" in extra else "chunked"
    elif "fused ops and kernels" in extra:
        loss = "chunked"
    legacy_bnb = "bnb 0.41" in text["source_ref"]
    context = re.search(r"~(\d+) mib cuda context", extra)
    setup = Setup(
        method=method, dtype=dtype, mixed_precision=mixed, seq_len=int(seq.group(1)) if seq else 512,
        batch_size=int(row["micro_batch"]), grad_checkpointing=text["grad_checkpointing"].startswith("yes"),
        optimizer=optimizer, lora_r=int(row["lora_r"]) if row["lora_r"].strip().isdigit() else 16,
        lora_targets=",".join(t for t in targets if t) or "all-linear",
        lora_dropout=0.1 if "dropout 0.1" in extra else 0.05, attn=attn, loss=loss, stage=stage,
        double_quant="nf4-dq" in base or "double quant" in base and "unstated" not in base,
        upcast_non_quantized=method == "qlora" and hf_stack,
        # HF Trainer of 2022 zeroed gradients in place (torch < 2), so they persisted like accumulated ones
        grad_accumulation=2 if "gradient_accumulation_steps 2" in extra or "transformers docs" in text["source"]
        else 1,
        foreach_optimizer="adamw_hf" not in text["optimizer"] or "adamw_torch" in text["optimizer"],
        cuda_context_gib=int(context.group(1)) / 1024 if context else 0.5,
        # transformers of 2024 computed GPT-BigCode's loss on 16-bit logits (Llama-family models upcast)
        logits_fp32="gpt_bigcode" not in text["model"], bnb_saves_inputs=legacy_bnb,
    )
    metric = "total" if "nvidia-smi/nvml used memory" in extra else "allocated"
    return setup, metric


def calibrate(csv_path: str | Path) -> list[CalibrationRow]:
    rows = []
    with open(csv_path, newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if row.get("is_estimate", "no").strip().lower() == "yes":
                continue
            name = row["model"].split(" (")[0].strip()
            shape = find_model(name)
            if shape is None:
                raise KeyError(f"row {index + 2}: model {name!r} is not in the catalog")
            setup, metric = setup_from_row(row)
            if shape.max_positions and setup.seq_len > shape.max_positions:  # packing stops at the model's length
                setup = replace(setup, seq_len=shape.max_positions)
            measured = float(row["measured_peak_gb"]) * 1e9
            rows.append(CalibrationRow(index + 2, name, setup, metric, measured, estimate(shape, setup),
                                       row["source"]))
    return rows


def summary(rows: list[CalibrationRow]) -> dict[str, float]:
    errors = [abs(r.error) for r in rows]
    return {"rows": len(rows), "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors),
            "mean_signed_error": statistics.mean(r.error for r in rows)}
