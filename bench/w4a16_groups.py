"""How much INT4 round-to-nearest costs a model, by group size and symmetry: mean KL against the model itself.

    python bench/w4a16_groups.py MODEL_FOLDER [--groups 128 64 32] [--dtype bfloat16]

Every nn.Linear but the output head is rounded to 4-bit integers per group of input columns, exactly as lorakit's
w4a16-rtn export rounds them (symmetric: scale = max|w| / 7.5 per group, as compressed-tensors computes it; asymmetric:
scale and zero point from the group's min and max), and the logits on lorakit's verification chats are compared with
the unrounded model's (the same figure `lorakit quantize --format w4a16` refuses above 0.4). No files are written:
the weights are rounded in place ("fake" quantization), which is what the checkpoint dequantizes to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def rounded(weight: torch.Tensor, group: int, symmetric: bool) -> torch.Tensor:
    rows, cols = weight.shape
    w = weight.float().reshape(rows, cols // group, group)
    if symmetric:
        # compressed-tensors' symmetric int4: scale = max|w| / ((q_max - q_min) / 2) with q in [-8, 7]
        scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 7.5
        q = (w / scale).round().clamp(-8, 7)
        return (q * scale).reshape(rows, cols)
    low, high = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    scale = ((high - low) / 15).clamp(min=1e-12)
    zero = (-low / scale).round() - 8
    q = (w / scale + zero).round().clamp(-8, 7)
    return ((q - zero) * scale).reshape(rows, cols)


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.export.logit_gap import compare_logits, logits_for, sample_token_ids

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--groups", type=int, nargs="*", default=[128, 64, 32])
    parser.add_argument("--dtype", default="float32", help="the precision everything else is kept in")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    samples, origin = sample_token_ids(args.model, tokenizer)
    reference = logits_for(AutoModelForCausalLM.from_pretrained(str(args.model), dtype="float32").eval(), samples)
    print(f"{args.model.name}: {len(samples)} chats ({origin}); rest kept in {args.dtype}")
    print("| group | symmetric | mean KL | top-1 agreement |\n|---|---|---|---|")
    for group in args.groups:
        for symmetric in (True, False):
            model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=getattr(torch, args.dtype)).eval()
            head = model.get_output_embeddings()
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.Linear) and module is not head:
                        if module.in_features % group:
                            break
                        module.weight.copy_(rounded(module.weight, group, symmetric).to(module.weight.dtype))
                else:
                    gap = compare_logits(reference, logits_for(model.float(), samples))
                    print(f"| {group} | {symmetric} | {gap['mean_kl']:.3f} | {gap['top1_agreement']:.3f} |",
                          flush=True)
                    continue
            print(f"| {group} | {symmetric} | (input widths not multiples of {group}) | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
