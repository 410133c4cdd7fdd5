"""Peak host memory of `lorakit merge` against the size of the merged weights.

    python bench/merge_memory.py                 # a ~170M-parameter bf16 Llama built locally, LoRA r=16 all-linear

Runs the merge in a child process (with and without the gap measurement) and prints its peak RSS minus the RSS of
the same process with the libraries imported and nothing loaded, next to the merged model's size and the shard size.
The claim checked: peak ≈ one copy of the merged weights + one shard.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
sys.path.insert(0, {repo!r})
import torch, transformers, peft, safetensors  # noqa
from lorakit.export.merge import merge_run
import lorakit.cli  # noqa
if {do_merge}:
    merge_run({adapter!r}, {out!r}, dtype="bfloat16", model={base!r}, max_shard_size="{shard}", verify={verify})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def build(workdir: Path) -> tuple[Path, Path, int]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lorakit.chat_template import CHATML
    from lorakit.tiny import TinySpec, build_tokenizer

    tokenizer = build_tokenizer(TinySpec())
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    base = workdir / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    adapter = workdir / "adapter"
    peft_model.save_pretrained(adapter)
    return base, adapter, size


def peak(script: str) -> int:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="lorakit-merge-bench-"))
    base, adapter, size = build(workdir)
    shard = "100MB"
    args = dict(repo=str(REPO), adapter=str(adapter), base=str(base), shard=shard)
    baseline = peak(CHILD.format(do_merge=False, out="", verify=False, **args))
    print(f"merged weights: {size / 1e6:.0f} MB (bf16), shard size {shard}, import baseline {baseline / 1e6:.0f} MB")
    for verify in (False, True):
        out = str(workdir / f"merged-{verify}")
        used = peak(CHILD.format(do_merge=True, out=out, verify=verify, **args)) - baseline
        print(f"merge {'with' if verify else 'without'} gap check: peak RSS above baseline {used / 1e6:.0f} MB "
              f"= {used / size:.2f} x merged weights")


if __name__ == "__main__":
    main()
