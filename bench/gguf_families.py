"""The GGUF family table of docs/gguf.md: every family's tiny random model exported and read back, as measured here.

    python bench/gguf_families.py                         # every family, q8_0 and q4_k_m (~6 min on 2 cores)
    python bench/gguf_families.py --types q8_0 --only Qwen3-MoE "Gemma 3 (text)"

Each family (tests/gguf_families.py: transformers' own config class, hidden 64, 2 layers, weights drawn with std
0.1 so the logits are far from flat) is exported by `lorakit quantize` (llama.cpp's converter + lorakit's tokenizer
part) and verified as every export is: KL(source || export) per token and top-1 agreement on the fixed prompts, in
transformers' GGUF reader when it reads the architecture and in llama.cpp (llama-cpp-python) when installed, and the
sample chats' tokenization. Prints the markdown table; a family that fails prints its one-line error in the row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fmt(value, spec=".1e") -> str:
    return "—" if value is None else format(value, spec)


def main() -> int:
    from lorakit.errors import LorakitError
    from lorakit.export.quantize import quantize_targets
    from lorakit.export.targets import requested_targets
    from tests.gguf_families import FAMILIES, build_family_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="q8_0,q4_k_m")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    print("| family | HF architecture | GGUF arch | type | KL transformers | KL llama.cpp | top-1 (judge) | "
          "tokenization | read back by |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            if args.only and family.name not in args.only:
                continue
            folder = build_family_model(family, Path(tmp) / "merged")
            try:
                results = quantize_targets(folder, requested_targets(None, "gguf", args.types, None), force=True,
                                           modelfile=False)
            except LorakitError as exc:
                print(f"| {family.name} | {family.hf_arch} | {family.gguf_arch} | {args.types} | "
                      f"failed: {exc.message[:120]} | | | | |", flush=True)
                shutil.rmtree(folder)
                continue
            for result in results:
                manifest = json.loads((result.path / "manifest.json").read_text())
                verification = manifest["verification"]
                cpp = verification.get("llama_cpp") or {}
                ours = verification["mean_kl"] if verification["judged_by"] == "transformers" else None
                tok = verification.get("tokenization") or {}
                print(f"| {family.name} | {family.hf_arch} | {manifest['gguf']['architecture']} "
                      f"| {result.summary['type']} | {fmt(ours)} | {fmt(cpp.get('mean_kl'))} "
                      f"| {verification['top1_agreement']:.3f} ({verification['judged_by']}) "
                      f"| {tok.get('mismatches', '—')}/{tok.get('texts', '—')} differ "
                      f"| {', '.join(result.summary['verified_runtimes'])} |", flush=True)
            shutil.rmtree(folder)
            for result in results:
                shutil.rmtree(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
