"""Batches by tokens against batches by examples, with the recipes' defaults, on short chats.

    python bench/token_batches.py                  # the bench's ~50M Llama, 50 short chats, 6 optimizer steps
    python bench/token_batches.py --model DIR      # any local model folder (e.g. an unpacked GGUF)

lorakit's defaults state an optimizer step as micro_batch_size 1 x gradient_accumulation_steps 8 = 8 examples. Side
`by-examples` runs that as written (`train.micro_batch_tokens: null`): eight forward passes of one chat each, nothing
to pack. Side `by-tokens` is the default (`train.micro_batch_tokens: auto`): the step's eight chats in padding-free
passes of up to the token budget, here one pass. Same model, data, seed, learning rate and schedule, each side in a
fresh process, the order alternating over the repeats; printed: seconds per optimizer step (steps after the first),
trained tokens per second, forward passes per step, peak RSS and the loss at every step (the two curves must agree:
the step's gradient is the same per-token mean).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

SIDES = {"by-examples": "null", "by-tokens": "auto"}


def write_short_chats(path: Path, rows: int, seed: int) -> None:
    """Chats of a short question and a short answer (8-40 words), like a first fine-tune's data."""
    from throughput import _words

    words, rng = _words(), random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(rows):
            question = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
            handle.write(json.dumps({"messages": [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": answer}]}) + "\n")


def run_worker(spec_path: str) -> None:
    from transformers.trainer_callback import PrinterCallback

    from lorakit.config import load_recipe
    from lorakit.outputs import RunFolder
    from lorakit.train.sft import build_sft_trainer
    from measure import Recorder, write_result

    spec = json.loads(Path(spec_path).read_text())
    # the recipes' defaults (micro_batch_size 1 x gradient_accumulation_steps 8) but for the one setting compared
    overrides = [f"train.micro_batch_tokens={spec['budget']}", "train.logging_steps=1", "train.save_steps=100000",
                 "data.eval=null", "preflight=false"]
    flags = {"model": spec["model"], "data": spec["data"], "output_dir": spec["out"], "max_steps": spec["steps"],
             "seed": 0}
    setup = build_sft_trainer(load_recipe("sft", None, overrides, flags), RunFolder.open(spec["out"], force=True))
    setup.trainer.remove_callback(PrinterCallback)
    recorder = Recorder()
    recorder.attach(setup.trainer)
    setup.trainer.train()
    write_result(spec["result"], recorder.result(spec["side"], "sft", passes=list(setup.trainer.lorakit_passes),
                                                 budget=setup.speed.micro_batch_tokens))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a local model folder (default: the bench's ~50M Llama, built locally)")
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return 0
    from throughput import bench_model, build_local_model, cpu_busy_seconds

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lorakit-token-batches-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORAKIT_CACHE", str(workdir / "cache"))
    model = args.model or bench_model(str(build_local_model(workdir / "model", 32000)), workdir / "model-bench")
    data = workdir / "short-chats.jsonl"
    write_short_chats(data, args.rows, 0)
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in (list(SIDES) if repeat % 2 == 0 else list(reversed(SIDES))):
            name = f"{side}-{repeat}"
            spec = {"side": side, "budget": SIDES[side], "model": str(model), "data": str(data), "steps": args.steps,
                    "out": str(workdir / name), "result": str(workdir / f"{name}.json")}
            (workdir / f"{name}.spec.json").write_text(json.dumps(spec))
            busy0 = cpu_busy_seconds()
            with open(workdir / f"{name}.log", "w") as log:
                code = subprocess.call([sys.executable, __file__, "--worker", str(workdir / f"{name}.spec.json")],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=str(BENCH.parent))
            if code:
                raise SystemExit(f"{name} failed; log {workdir / f'{name}.log'}")
            result = json.loads(Path(spec["result"]).read_text())
            result["machine_busy"] = (cpu_busy_seconds() - busy0) / max(result["wall_s"], 1e-9)
            results[side].append(result)
    print(f"\n{'side':12s} {'s/step':>8s} {'trained tok/s':>14s} {'passes/step':>12s} {'peak RSS GB':>12s}  losses")
    rows = {}
    for side, runs in results.items():
        per_step = statistics.median((r["step_times"][-1] - r["step_times"][0]) / max(len(r["step_times"]) - 1, 1)
                                     for r in runs)
        trained = runs[0]["tokens"]["trained"]
        rate = statistics.median(r["tokens"]["trained"] / r["wall_s"] for r in runs)
        passes = runs[0]["passes"] or [runs[0]["micro_batches"] / max(runs[0]["steps"], 1)]
        rows[side] = {"s_per_step": per_step, "tok_s": rate, "losses": runs[0]["losses"], "trained": trained}
        print(f"{side:12s} {per_step:8.2f} {rate:14.1f} {statistics.mean(passes):12.1f} "
              f"{statistics.median(r['peak_rss_gb'] for r in runs):12.2f}  "
              + " ".join(f"{x:.4f}" for x in runs[0]["losses"]))
    ratio = rows["by-examples"]["s_per_step"] / rows["by-tokens"]["s_per_step"]
    print(f"\nby tokens: {ratio:.2f}x fewer seconds per optimizer step; trained tokens "
          f"{rows['by-tokens']['trained']} vs {rows['by-examples']['trained']}; largest loss difference "
          f"{max(abs(a - b) for a, b in zip(rows['by-tokens']['losses'], rows['by-examples']['losses'])):.2e}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
