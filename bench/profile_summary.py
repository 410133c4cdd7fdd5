"""Where each side's training time goes, from the operator tables `bench/throughput.py --profile` writes.

    python bench/profile_summary.py /tmp/bench/profile-sft-*-0.json

Self CPU time of torch.profiler's operators, grouped: attention (the SDPA kernels, forward and backward), matmul
(linear layers and the LM head, forward and backward), loss (log-softmax / cross-entropy), mask (building and
applying attention masks: comparisons, where, tril, fill), optimizer, and the rest. Seconds are summed over the
threads' self time, so they can exceed the wall time of the training window.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GROUPS = (  # first match wins: the loss before attention, whose math path has a softmax too
    ("loss", ("log_softmax", "nll_loss", "cross_entropy", "logsumexp")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "_softmax_backward", "softmax")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("mask", ("aten::eq", "aten::where", "aten::tril", "aten::triu", "aten::masked_fill", "aten::logical",
              "aten::__and__",
              "aten::bitwise_and", "aten::ge", "aten::le", "aten::lt", "aten::gt", "aten::index", "aten::arange")),
    ("optimizer", ("Optimizer.step", "_foreach", "adam", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(key.lower() in lowered for key in keys):
            return group
    return "other"


def summarize(path: Path) -> dict[str, float]:
    rows = json.loads(path.read_text())
    totals: dict[str, float] = {}
    for row in rows:
        if row["name"].startswith("ProfilerStep") or row["name"].startswith("Optimizer.step"):
            continue  # wrappers: their children carry the time
        group = group_of(row["name"])
        totals[group] = totals.get(group, 0.0) + row["self_cpu_s"]
    return totals


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]]
    names = [g for g, _ in GROUPS] + ["other"]
    print(f"{'side':40s}" + "".join(f"{n:>16s}" for n in names) + f"{'total':>10s}")
    for path in paths:
        totals = summarize(path)
        total = sum(totals.values())
        cells = "".join(f"{totals.get(n, 0):9.1f}s {100 * totals.get(n, 0) / total:4.0f}%" for n in names)
        print(f"{path.stem:40s}{cells}{total:9.1f}s")


if __name__ == "__main__":
    main()
