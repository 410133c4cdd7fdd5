"""The max-context table of docs/long-context.md: the longest trainable sequence per model and GPU, from the planner.

    python bench/max_context_table.py              # markdown, QLoRA r=32 all-linear, batch 1 (Unsloth's setting)
    python bench/max_context_table.py --json

Pure arithmetic (lorakit.vram.context.max_context, the same search as `lorakit vram-estimate MODEL --max-context
--gpu GPU`). Published figures sit beside it where their authors published them: Unsloth's "Context length
benchmarks" (docs.unsloth.ai/basics/unsloth-benchmarks: Llama 3.1 8B Instruct, 4-bit QLoRA on all linear layers,
rank 32, batch 1, sequences padded to the length) for Unsloth and for Hugging Face + FA2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.vram.catalog import GPUS, find_model  # noqa: E402
from lorakit.vram.context import max_context  # noqa: E402
from lorakit.vram.estimate import lorakit_defaults  # noqa: E402

MODELS = ("Llama-3.1-8B", "Qwen2.5-7B", "Qwen3-8B", "gemma-3-12b-pt", "Mistral-7B-v0.3")
CARDS = (("rtx4090", "24 GB"), ("rtx4080", "16 GB"))
# (model, card) -> (Unsloth, HF + FA2), published; nothing else was published for these models
PUBLISHED = {("Llama-3.1-8B", "rtx4090"): (78_475, 5_789), ("Llama-3.1-8B", "rtx4080"): (40_724, 2_551)}
COLUMNS = ("defaults", "offloading", "offloading_no_dropout", "no_tiles", "fp32_upcast", "hf_usual")


def table() -> list[dict]:
    rows = []
    for name in MODELS:
        shape = find_model(name)
        for card, label in CARDS:
            found = {row.option.key: row.max_seq_len for row in
                     max_context(shape, lorakit_defaults(method="qlora", lora_r=32), GPUS[card])}
            unsloth, hf = PUBLISHED.get((name, card), (None, None))
            rows.append({"model": name, "gpu": card, "memory": label, **found, "unsloth_published": unsloth,
                         "hf_fa2_published": hf})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| model | GPU | lorakit defaults | + activation offloading | + offloading, LoRA dropout 0 | "
            "without tiles | with fp32 upcast | usual HF set-up (estimated) | Unsloth (published) | "
            "HF + FA2 (published) |")
    lines = [head, "|" + "---|" * 10]
    for row in rows:
        cells = [f"{row[key]:,}" for key in COLUMNS]
        published = [f"{row[key]:,}" if row[key] else "-" for key in ("unsloth_published", "hf_fa2_published")]
        lines.append(f"| {row['model']} | {row['memory']} | " + " | ".join(cells + published) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = table()
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
