"""The estimator against published measured peaks, row by row, and how well it holds on sources it was not tuned on.

    python bench/vram_calibration.py                   # calibration rows + validation rows + leave-one-source-out
    python bench/vram_calibration.py FILE.csv [...]    # any CSVs with the same columns

A dev tool (not part of the lorakit wheel): it reads CSVs with one measured run per row and its provenance. Columns
used: source, source_ref, model, method, base_precision, compute_dtype, seq_len, micro_batch, grad_checkpointing,
optimizer, lora_r, lora_targets, attn_impl, extra, measured_peak_gb, is_estimate; optional: num_gpus, strategy.
Rows measured with nvidia-smi/NVML are compared with the estimate's GPU total (context included), rows measured with
torch.cuda.max_memory_allocated with its allocated peak, "peak memory reserved" rows with its reserved peak. GB in
the CSV are 10^9 bytes.

Each source's software stack is described by facts read from its own code and pinned versions (`stack_facts`), not
fitted: which bitsandbytes kept 4-bit inputs, whether the LM head was quantized, how the trainer cast weights. The
few constants of the estimator that are not exact byte counts (`lorakit.vram.estimate.K`) are checked by
leave-one-source-out: refit them on all sources but one, score the one left out.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lorakit.vram import estimate as est_mod  # noqa: E402
from lorakit.vram.catalog import find_model  # noqa: E402
from lorakit.vram.estimate import Estimate, Setup, estimate  # noqa: E402

CALIBRATION = REPO / "tests" / "data" / "vram_calibration.csv"
VALIDATION = REPO / "tests" / "data" / "vram_validation.csv"

_TARGETS = {"query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
            "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


@dataclass
class CalibrationRow:
    index: int
    model: str
    setup: Setup
    metric: str  # allocated | reserved | total
    measured: float  # bytes
    estimate: Estimate
    source: str
    path: str
    shape: object  # the ModelShape the row was estimated with

    @property
    def predicted(self) -> float:
        return {"allocated": self.estimate.allocated, "reserved": self.estimate.reserved,
                "total": self.estimate.total}[self.metric]

    @property
    def error(self) -> float:
        return self.predicted / self.measured - 1


def _bnb_version(text: str) -> tuple[int, ...] | None:
    found = re.search(r"(?:bnb|bitsandbytes)[ =]+(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in found.groups() if x is not None) if found else None


def stack_facts(row: dict[str, str]) -> dict:
    """Setup fields that follow from the software stack a row was measured with (each with its reason)."""
    source, ref, extra = row["source"].lower(), row["source_ref"].lower(), row["extra"].lower()
    method = row["method"].lower()
    facts: dict = {}
    bnb = _bnb_version(ref + " " + extra)
    # bitsandbytes < 0.43.2 kept every 4-bit layer's input for backward (ctx.tensors = (A, B); bitsandbytes PR 1270)
    facts["bnb_saves_inputs"] = bnb is not None and bnb < (0, 43, 2)
    if source.startswith("litgpt"):
        # Lightning's BitsandbytesPrecision converts every nn.Linear, the LM head included; bf16-true trains pure
        # 16-bit weights without autocast; litgpt's LoRA/QLoRA scripts use a 128-token chunked head + CE
        facts.update(quantize_head=True, autocast=False, upcast_non_quantized=False, loss="chunked")
        # litgpt's fit loop keeps `loss` bound until the next micro-batch rebinds it, so a bitsandbytes < 0.43.2
        # graph (its 4-bit layers' inputs on ctx) outlives the step (reproduced on the CPU: test_vram_measured);
        # the 2023 resource tables peak on the first iteration (forced to the longest sample), which has no
        # previous graph
        facts["bnb_inputs_outlive_step"] = facts["bnb_saves_inputs"] and "first iteration forced" not in extra
        if "untied" in extra:
            facts["untie"] = True  # litgpt of mid-2024 kept a separate lm_head copy for tied models (Llama 3.2)
    elif "fms-acceleration" in source:
        # TRL 0.13 (pinned in refs/requirements.txt): prepare_model_for_kbit_training, then
        # peft_module_casting_to_bf16 casts embeddings and head back to bf16 (norms stay fp32) under --bf16; the
        # fms bnb plugin loads with double quantization. PEFT 0.13 keeps LoRA weights fp32 (autocast_adapter_dtype).
        if method == "qlora":
            facts.update(upcast_non_quantized="norms", double_quant=True)
            if "num_gpus 2" in extra or row.get("num_gpus", "1").strip() not in ("", "1"):
                facts["upcast_non_quantized"] = False  # sharded QLoRA: TRL skips the k-bit preparation
        if method == "lora":
            facts["mixed_precision"] = True
        facts["autocast"] = "amp" in row["compute_dtype"].lower() or "--bf16 true" in row["compute_dtype"].lower()
    return facts


def setup_from_row(row: dict[str, str]) -> tuple[Setup, str, dict]:
    text = {k: (v or "").lower() for k, v in row.items() if k is not None}
    method = text["method"]
    base = text["base_precision"]
    stage = "sft"
    quant = None
    if method == "inference":
        stage = "inference"
        quant = "int8" if "int8" in base else ("nf4" if "nf4" in base else ("fp4" if "fp4" in base else None))
        method = "full"
    dtype = "fp32" if text["compute_dtype"].startswith("fp32") else (
        "fp16" if text["compute_dtype"].startswith("fp16") else "bf16")
    mixed = "amp" in text["compute_dtype"] or "master" in base
    seq = re.match(r"~?(\d+)", text["seq_len"])
    optimizer = text["optimizer"]
    optimizer = ("paged-adamw-8bit" if "paged" in optimizer and "8bit" in optimizer else
                 "paged-adamw" if "paged" in optimizer else
                 "adamw-8bit" if "8bit" in optimizer else "adafactor" if "adafactor" in optimizer else "adamw")
    targets = [_TARGETS.get(t.strip().split(" ")[0]) for t in text["lora_targets"].split("(")[0].split(",")]
    attn = "flash" if "flash" in text["attn_impl"] else "eager" if "eager" in text["attn_impl"] else "sdpa"
    extra = text["extra"]
    loss = "plain"
    if "chunked ce" in extra or "fused-linear-cross-entropy" in extra:
        loss = "fused" if "fused-linear" in extra else "chunked"
    elif "fused ops and kernels" in extra:
        loss = "chunked"
    context = re.search(r"~(\d+) mib cuda context", extra)
    gpus = int(text.get("num_gpus") or 1)
    facts = stack_facts(row)
    untie = facts.pop("untie", False)
    setup = Setup(
        method=method, dtype=dtype, mixed_precision=mixed, seq_len=int(seq.group(1)) if seq else 512,
        batch_size=int(row["micro_batch"]), grad_checkpointing=text["grad_checkpointing"].startswith("yes"),
        optimizer=optimizer, lora_r=int(row["lora_r"]) if row["lora_r"].strip().isdigit() else 16,
        lora_targets=",".join(t for t in targets if t) or "all-linear",
        lora_dropout=0.1 if "dropout 0.1" in extra else 0.05, attn=attn, loss=loss, stage=stage, quant=quant,
        double_quant="nf4-dq" in base or "double quant" in base and "unstated" not in base,
        # HF Trainer of 2022 zeroed gradients in place (torch < 2), so they persisted like accumulated ones
        grad_accumulation=2 if "gradient_accumulation_steps 2" in extra or "transformers docs" in text["source"]
        else 1,
        foreach_optimizer="adamw_hf" not in text["optimizer"] or "adamw_torch" in text["optimizer"],
        cuda_context_gib=int(context.group(1)) / 1024 if context else 0.5,
        # transformers of 2024 computed GPT-BigCode's loss on 16-bit logits (Llama-family models upcast)
        logits_fp32="gpt_bigcode" not in text["model"],
        num_gpus=gpus, strategy=(text.get("strategy") or "ddp").strip() or "ddp",
    )
    setup = replace(setup, **facts)
    metric = ("total" if "nvidia-smi/nvml used memory" in extra else
              "reserved" if "peak memory reserved" in extra else "allocated")
    return setup, metric, {"untie": untie}


def _rows(path: Path):
    with open(path, newline="", encoding="utf-8") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if (row.get("is_estimate") or "no").strip().lower() == "yes":
                continue
            yield index + 2, row


def calibrate(*paths: str | Path) -> list[CalibrationRow]:
    rows = []
    for path in paths or (CALIBRATION,):
        for index, row in _rows(Path(path)):
            name = row["model"].split(" (")[0].strip()
            shape = find_model(name)
            if shape is None:
                raise KeyError(f"{path} row {index}: model {name!r} is not in the catalog")
            setup, metric, adjust = setup_from_row(row)
            if adjust["untie"] and shape.tied:
                shape = replace(shape, tied=False)
            if shape.max_positions and setup.seq_len > shape.max_positions:  # packing stops at the model's length
                setup = replace(setup, seq_len=shape.max_positions)
            measured = float(row["measured_peak_gb"]) * 1e9
            rows.append(CalibrationRow(index, name, setup, metric, measured, estimate(shape, setup), row["source"],
                                       Path(path).name, shape))
    return rows


def summary(rows: list[CalibrationRow]) -> dict[str, float]:
    errors = [abs(r.error) for r in rows]
    return {"rows": len(rows), "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors),
            "mean_signed_error": statistics.mean(r.error for r in rows)}


# The estimator's constants that are not exact byte counts, and the values a refit may try.
GRID = {
    "plain_ce_bytes": (10.0, 12.0, 14.0),
    "chunked_factor": (2.0, 3.0, 4.0),
    "recompute_grads": (1.0, 2.0, 3.0),
    "allocator_slack": (1.05, 1.10, 1.20),
}


@contextlib.contextmanager
def constants(**values):
    old = est_mod.K
    est_mod.K = replace(old, **values)
    try:
        yield
    finally:
        est_mod.K = old


def _refit(rows: list[CalibrationRow], values: dict) -> list[CalibrationRow]:
    with constants(**values):
        return [replace(r, estimate=estimate(r.shape, r.setup)) for r in rows]


def _score(rows: list[CalibrationRow]) -> float:
    errors = [abs(r.error) for r in rows]
    return statistics.median(errors) + 0.25 * max(errors)


def leave_one_source_out(rows: list[CalibrationRow]) -> list[dict]:
    """For each source: refit the constants on the others (grid search, median + 1/4 worst), score the one left
    out, next to its error with the shipped constants."""
    by_source: dict[str, list[CalibrationRow]] = {}
    for r in rows:
        by_source.setdefault(r.source, []).append(r)
    names = list(GRID)
    results = []
    for held in by_source:
        others = [r for s, group in by_source.items() if s != held for r in group]
        best = min((dict(zip(names, combo)) for combo in itertools.product(*(GRID[n] for n in names))),
                   key=lambda values: _score(_refit(others, values)))
        held_rows = _refit(by_source[held], best)
        shipped = by_source[held]
        results.append({"source": held, "rows": len(shipped), "refit": best,
                        "median_refit": statistics.median(abs(r.error) for r in held_rows),
                        "worst_refit": max(abs(r.error) for r in held_rows),
                        "median_shipped": statistics.median(abs(r.error) for r in shipped),
                        "worst_shipped": max(abs(r.error) for r in shipped)})
    return results


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    paths = [Path(p) for p in sys.argv[1:]] or [CALIBRATION, VALIDATION]
    everything = []
    for path in paths:
        rows = calibrate(path)
        everything += rows
        table = Table(title=f"vram-estimate vs measured ({path.name})", title_justify="left")
        for column in ("row", "model", "setup", "measured", "estimated", "error"):
            table.add_column(column, justify="right" if column in ("measured", "estimated", "error") else "left")
        for r in rows:
            s = r.setup
            setup = (f"{s.method}/{s.stage} {s.quant or s.dtype} seq {s.seq_len}x{s.batch_size} "
                     f"gc {'on' if s.grad_checkpointing else 'off'} {s.optimizer or 'auto'} {s.loss}"
                     + (f" {s.num_gpus}x{s.strategy}" if s.num_gpus > 1 else "") + f" [{r.metric}]")
            table.add_row(str(r.index), r.model, setup, f"{r.measured / 1e9:.2f}", f"{r.predicted / 1e9:.2f}",
                          f"{100 * r.error:+.1f}%")
        console.print(table)
        stats = summary(rows)
        console.print(f"{path.name}: {stats['rows']} rows: median |error| {100 * stats['median_abs_error']:.1f}%, "
                      f"worst {100 * stats['worst_abs_error']:.1f}%, mean signed {100 * stats['mean_signed_error']:+.1f}%")
    if len(everything) > 1:
        console.print("\nLeave one source out (constants refit on the other sources):")
        for item in leave_one_source_out(everything):
            console.print(f"  {item['source']:32s} {item['rows']:3d} rows: held out median {100 * item['median_refit']:.1f}% "
                          f"worst {100 * item['worst_refit']:.1f}% (shipped constants: median "
                          f"{100 * item['median_shipped']:.1f}%, worst {100 * item['worst_shipped']:.1f}%) "
                          f"refit {item['refit']}")


if __name__ == "__main__":
    main()
