"""How training cost grows with sequence length: lorakit against the peers' best settings, side by side.

    python bench/long_context.py                              # lengths 1k, 4k, 16k, 32k on the CPU (hours under load)
    python bench/long_context.py --lengths 1024,4096 --steps 2
    python bench/long_context.py --summarize WORKDIR          # the tables from an interrupted run's results
    bash bench/setup_llamafactory.sh                          # once, for the LLaMA-Factory side

The model is bench/throughput.py's ~50M-parameter Llama (hidden 512, 6 layers, 32k vocabulary, built locally, here
with room for 40k positions). Every step trains one long document: a short user turn and an assistant reply that
fills the length (completion-only loss), rendered with the bench's ChatML on every side, so every side trains the
same tokens (checked). LoRA r=16 on all linear layers, adamw_torch, non-reentrant gradient checkpointing, one
document per optimizer step, each side in a fresh process:

  lorakit            lorakit's defaults (tiled MLPs where its planner says they pay, its streamed plain LM head on
                     the CPU, per-example attention)
  trl-padding-free   TRL `padding_free=True`, completion-only loss (TRL's fused LM head)
  llamafactory       LLaMA-Factory `neat_packing: true`, cutoff_len = the length (its own venv)

Measured per side and length: tokens/s over the steps after the first; achieved FLOP/s (`model_flops`: the
linear layers', LM head's and causal attention's FLOPs of a forward and backward at that length -- no recompute
counted, so recomputation shows as lower FLOP/s -- divided by the time); peak RSS of the training process; and
the peak bytes the CPU allocator held above the step's start during the first step (bench/measure.py
AllocatorTrace: the activations, the loss's buffers and the first step's gradients and optimizer state), per
token. Then the slope of that peak against the length (least squares: bytes per added token) and lorakit's ratios:
activation bytes per token at the longest length against the best peer (target <= 0.5x), and its FLOP/s at the
longest length against its own at the shortest (target within 20 %).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

SIDES = ("lorakit", "trl-padding-free", "llamafactory")
# lorakit with one recipe change each, for --sides: what each long-sequence default is worth, side by side in one run
ABLATIONS = {
    "lorakit-no-tiles": ["train.tiled_mlp=false"],
    "lorakit-tiles": ["train.tiled_mlp=true"],
    # a 4-bit base in bf16 (bitsandbytes runs NF4 on the CPU): lorakit's default keeps the compute dtype ...
    "lorakit-qlora": ["method=qlora", "train.precision=bf16"],
    # ... and PEFT's prepare_model_for_kbit_training upcast (fp32 embeddings, norms and head)
    "lorakit-qlora-upcast": ["method=qlora", "train.precision=bf16", "qlora.upcast_to_fp32=true"],
}
ALL_SIDES = (*SIDES, *ABLATIONS)
LENGTHS = (1024, 4096, 16384, 32768)
MAX_POSITIONS = 40960
LEARNING_RATE = 1e-4


# ----------------------------------------------------------------------------------------------------------- data
def write_documents(path: Path, model_dir: str, length: int, count: int, seed: int) -> list[int]:
    """`count` chats of one short question and a reply that fills `length` tokens (a few tokens short at most) under
    the bench's chat template; returns their token counts."""
    from transformers import AutoTokenizer

    from throughput import _words

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words, rng = _words(), random.Random(seed + length)
    sizes = []
    with open(path, "w") as handle:
        for _ in range(count):
            prompt = " ".join(rng.choice(words) for _ in range(12))
            pool = [rng.choice(words) for _ in range(length * 2)]

            def tokens(n: int, prompt=prompt, pool=pool) -> int:  # bound now: the loop moves on after this row
                chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": " ".join(pool[:n])}]
                return len(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False))

            low, high = 1, len(pool)
            while low < high:  # the most words that stay within the length
                mid = (low + high + 1) // 2
                low, high = (mid, high) if tokens(mid) <= length else (low, mid - 1)
            sizes.append(tokens(low))
            handle.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                     "completion": [{"role": "assistant", "content": " ".join(pool[:low])}]}) + "\n")
    return sizes


def model_flops(config: dict, length: int) -> float:
    """FLOPs of one forward and backward over one sequence of `length` tokens (2 per multiply-add; backward = 2 x
    forward): every linear layer and the LM head, and causal attention (QK^T and AV over the lower triangle)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    dim = hidden // heads
    inter, vocab = config["intermediate_size"], config["vocab_size"]
    per_layer = hidden * heads * dim + 2 * hidden * kv * dim + heads * dim * hidden + 3 * hidden * inter
    linear = 2 * length * (layers * per_layer + hidden * vocab)
    attention = 2 * layers * heads * dim * length * length  # 4 * L^2 * h per layer for the full square, halved
    return 3 * (linear + attention)


# ----------------------------------------------------------------------------------------------------------- sides
def build_lorakit(spec: dict):
    from lorakit.config import load_recipe
    from lorakit.outputs import RunFolder
    from lorakit.train.sft import build_sft_trainer
    from throughput import LORA

    overrides = [
        f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}", f"lora.dropout={LORA['dropout']}",
        "train.micro_batch_size=1", "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=true",
        "train.warmup_ratio=0.0", "train.lr_scheduler_type=linear", "train.optim=adamw_torch",
        "train.weight_decay=0.0", "train.max_grad_norm=1.0", "train.logging_steps=1", "train.save_steps=100000",
        f"data.max_length={spec['length'] + 8}", "data.eval=null", "preflight=false",
        *ABLATIONS.get(spec["side"], []),  # an ablation side's recipe change
        *spec.get("lorakit_set", []),  # changes for every lorakit side (--lorakit-set)
    ]
    flags = {"model": spec["model"], "data": spec["data"], "output_dir": spec["out"], "epochs": 1,
             "learning_rate": LEARNING_RATE, "seed": spec["seed"]}
    setup = build_sft_trainer(load_recipe("sft", None, overrides, flags), RunFolder.open(spec["out"], force=True))
    speed = setup.speed
    return setup.trainer, {"tiled_mlp": speed.tiled_mlp, "tiled_mlp_why": speed.reasons.get("tiled_mlp"),
                           "loss_head": speed.loss, "attention": speed.attention}


def build_trl(spec: dict):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    from throughput import peft_lora, shared_trl_args, trl_tokenizer

    base = {**spec, "epochs": 1, "learning_rate": LEARNING_RATE, "gradient_checkpointing": True}
    config = SFTConfig(**shared_trl_args(base, 1), padding_free=True, completion_only_loss=True, max_length=None)
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    return SFTTrainer(model=spec["model"], args=config, train_dataset=dataset,
                      processing_class=trl_tokenizer(spec["model"]), peft_config=peft_lora()), {}


def run_worker(spec_path: str) -> None:
    import torch
    from transformers.trainer_callback import PrinterCallback

    from measure import Recorder, write_result

    spec = json.loads(Path(spec_path).read_text())
    trainer, info = build_lorakit(spec) if spec["side"].startswith("lorakit") else build_trl(spec)
    trainer.remove_callback(PrinterCallback)
    recorder = Recorder(trace_memory=True)
    recorder.attach(trainer)
    trainer.train()
    write_result(spec["result"], recorder.result(spec["side"], "sft", rows=len(trainer.train_dataset),
                                                 torch=torch.__version__, **info))


# ---------------------------------------------------------------------------------------------------------- runner
def run_side(spec: dict, workdir: Path, lf_python: Path | None) -> dict:
    from throughput import cpu_busy_seconds

    name = f"{spec['side']}-{spec['length']}"
    spec = {**spec, "out": str(workdir / name), "result": str(workdir / f"{name}.json")}
    shutil.rmtree(spec["out"], ignore_errors=True)
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    if spec["side"] == "llamafactory":
        command = [str(lf_python), str(BENCH / "llamafactory_side.py"), str(spec_path)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    log = workdir / f"{name}.log"
    busy0, children0, wall0 = cpu_busy_seconds(), os.times(), time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=str(BENCH.parent))
    wall = time.perf_counter() - wall0
    children1 = os.times()
    own = (children1.children_user - children0.children_user) + (children1.children_system
                                                                 - children0.children_system)
    if code != 0:
        return {"side": spec["side"], "length": spec["length"], "error": f"exit {code}; log {log}",
                "log_tail": log.read_text()[-2000:]}
    result = json.loads(Path(spec["result"]).read_text())
    result.update(length=spec["length"], other_load=max(cpu_busy_seconds() - busy0 - own, 0.0) / wall,
                  loadavg=os.getloadavg()[0])
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return result


def available_gb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("inf")


def predicted_rss_gb(earlier: list[dict], length: int) -> float | None:
    """A side's peak RSS at `length` from its earlier lengths: the line through the last two, or from the last one
    at its allocator bytes per token."""
    done = sorted((r for r in earlier if "error" not in r and "skipped" not in r), key=lambda r: r["length"])
    if not done:
        return None
    last = done[-1]
    if len(done) >= 2:
        before = done[-2]
        per_token = (last["peak_rss_gb"] - before["peak_rss_gb"]) / (last["length"] - before["length"])
        per_token = max(per_token, last["alloc_bytes_per_token"] / 1e9)
    else:
        per_token = last["alloc_bytes_per_token"] / 1e9
    return last["peak_rss_gb"] + per_token * (length - last["length"])


def measured(result: dict, config: dict) -> dict:
    """The row of the table for one side at one length."""
    times, batches = result["step_times"], result["batches"]
    per_step = [b for b in batches]  # one micro-batch per step here
    timed = len(times) - 1
    if timed >= 1:
        seconds = times[-1] - times[0]
        tokens = sum(b["processed"] for b in per_step[1:])
    else:  # one step only: the traced step (the profiler's overhead is small next to a long step)
        seconds, tokens = times[0], per_step[0]["processed"]
    flops = sum(model_flops(config, b["processed"]) for b in (per_step[1:] if timed >= 1 else per_step))
    traced = result.get("traced_tokens") or per_step[0]["processed"]
    return {"side": result["side"], "length": result["length"], "tokens_per_s": tokens / seconds,
            "gflops_per_s": flops / seconds / 1e9, "peak_rss_gb": result["peak_rss_gb"],
            "peak_alloc_mb": result.get("allocator_peak_bytes", 0) / 1e6,
            "alloc_bytes_per_token": result.get("allocator_peak_bytes", 0) / traced,
            "trained": result["tokens"]["trained"], "steps": result["steps"], "other_load": result.get("other_load"),
            "tiled_mlp": result.get("tiled_mlp"), "allocator_error": result.get("allocator_error")}


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through (length, bytes): (bytes per added token, intercept)."""
    if len(points) < 2:
        return float("nan"), float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return b, my - b * mx


def summarize(rows: list[dict]) -> dict:
    lengths = sorted({r["length"] for r in rows})
    sides = [s for s in ALL_SIDES if any(r["side"] == s for r in rows)]
    by = {(r["side"], r["length"]): r for r in rows}
    slopes = {s: slope([(n, by[s, n]["peak_alloc_mb"] * 1e6) for n in lengths if (s, n) in by]) for s in sides}
    rss_slopes = {s: slope([(n, by[s, n]["peak_rss_gb"] * 1e9) for n in lengths if (s, n) in by]) for s in sides}
    longest, shortest = lengths[-1], lengths[0]
    peers = [by[s, longest] for s in sides if not s.startswith("lorakit") and (s, longest) in by]
    report: dict = {"lengths": lengths, "sides": sides, "slopes_bytes_per_token": {s: v[0] for s, v in slopes.items()},
                    "rss_slopes_bytes_per_token": {s: v[0] for s, v in rss_slopes.items()}}
    if ("lorakit", longest) in by and peers:
        best = min(peers, key=lambda r: r["alloc_bytes_per_token"])
        report["activation_ratio_at_longest"] = {"peer": best["side"], "ratio": by["lorakit", longest][
            "alloc_bytes_per_token"] / best["alloc_bytes_per_token"]}
    if ("lorakit", longest) in by:
        # against every peer's slope (bytes per added token): also for peers too large to run at the longest length
        lorakit = by["lorakit", longest]["alloc_bytes_per_token"]
        report["activation_ratio_to_peer_slopes"] = {s: lorakit / v[0] for s, v in slopes.items()
                                                     if not s.startswith("lorakit") and v[0] == v[0] and v[0] > 0}
    if ("lorakit", longest) in by and ("lorakit", shortest) in by:
        report["lorakit_flops_longest_over_shortest"] = (by["lorakit", longest]["gflops_per_s"]
                                                          / by["lorakit", shortest]["gflops_per_s"])
    # each ablation against its reference, length by length: (allocator peak, time per token) ratios
    pairs = {"lorakit-no-tiles": "lorakit", "lorakit-tiles": "lorakit-no-tiles", "lorakit-qlora-upcast": "lorakit-qlora"}
    report["ablations"] = {
        f"{side} / {reference}": {n: {"alloc_peak": by[side, n]["peak_alloc_mb"] / by[reference, n]["peak_alloc_mb"],
                                      "seconds_per_token": by[reference, n]["tokens_per_s"] / by[side, n]["tokens_per_s"]}
                                  for n in lengths if (side, n) in by and (reference, n) in by}
        for side, reference in pairs.items() if side in sides and reference in sides}
    return report


def print_tables(rows: list[dict], report: dict) -> None:
    by = {(r["side"], r["length"]): r for r in rows}
    print(f"\n{'length':>7s} {'side':20s} {'tok/s':>8s} {'GFLOP/s':>8s} {'peak RSS GB':>12s} {'alloc peak MB':>14s} "
          f"{'alloc B/token':>14s} {'trained':>8s} {'tiled':>6s} {'others busy':>12s}")
    for length in report["lengths"]:
        for side in report["sides"]:
            r = by.get((side, length))
            if r is None:
                continue
            if "error" in r or "skipped" in r:
                print(f"{length:7d} {side:20s} {'failed: ' + r['error'] if 'error' in r else 'skipped: ' + r['skipped']}")
                continue
            print(f"{length:7d} {side:20s} {r['tokens_per_s']:8.1f} {r['gflops_per_s']:8.2f} {r['peak_rss_gb']:12.2f} "
                  f"{r['peak_alloc_mb']:14.1f} {r['alloc_bytes_per_token']:14,.0f} {r['trained']:8d} "
                  f"{str(r['tiled_mlp'] if r['tiled_mlp'] is not None else '-'):>6s} "
                  f"{(r['other_load'] or 0):12.2f}")
    print("\nslope of the allocator peak vs length (bytes per added token): "
          + ", ".join(f"{s} {v:,.0f}" for s, v in report["slopes_bytes_per_token"].items()))
    print("slope of peak RSS vs length (bytes per added token): "
          + ", ".join(f"{s} {v:,.0f}" for s, v in report["rss_slopes_bytes_per_token"].items()))
    if "activation_ratio_at_longest" in report:
        ratio = report["activation_ratio_at_longest"]
        print(f"lorakit's allocator bytes per token at {report['lengths'][-1]:,}: {ratio['ratio']:.2f}x the best peer's "
              f"({ratio['peer']}); target <= 0.5x")
    for peer, ratio in report.get("activation_ratio_to_peer_slopes", {}).items():
        print(f"lorakit's allocator bytes per token at {report['lengths'][-1]:,} / {peer}'s slope: {ratio:.2f}x")
    for pair, per_length in report.get("ablations", {}).items():
        print(f"{pair}: " + ", ".join(f"{n:,}: allocator peak {v['alloc_peak']:.2f}x, time per token "
                                       f"{v['seconds_per_token']:.2f}x" for n, v in per_length.items()))
    if "lorakit_flops_longest_over_shortest" in report:
        print(f"lorakit's achieved FLOP/s at {report['lengths'][-1]:,} / at {report['lengths'][0]:,}: "
              f"{report['lorakit_flops_longest_over_shortest']:.2f}; target >= 0.80")


def load_rows(workdir: Path, config: dict) -> list[dict]:
    rows = []
    for path in sorted(workdir.glob("*-[0-9]*.json")):
        if path.name.endswith(".spec.json"):
            continue
        result = json.loads(path.read_text())
        rows.append(measured(result, config) if "error" not in result else result)
    return rows


def check_trained_tokens(rows: list[dict]) -> None:
    for length in {r["length"] for r in rows}:
        counts = {r["side"]: r["trained"] for r in rows if r["length"] == length and "error" not in r}
        if len(set(counts.values())) > 1:
            raise SystemExit(f"length {length}: the sides trained different numbers of tokens: {counts}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--steps", type=int, default=3, help="documents (= optimizer steps) per side and length; the "
                                                             "first is traced, the others timed")
    parser.add_argument("--long-steps", type=int, default=1,
                        help="steps at lengths of 16k and more (one: the traced step is also the timed one; at those "
                             "lengths a step takes minutes and the profiler's overhead is a small part of it)")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated, of {', '.join(ALL_SIDES)} (the lorakit-* sides are one recipe change "
                             "each: ablations)")
    parser.add_argument("--lorakit-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe change for the lorakit side (an ablation, e.g. train.tiled_mlp=false)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir")
    parser.add_argument("--summarize", metavar="WORKDIR")
    parser.add_argument("--memory-share", type=float, default=0.8,
                        help="skip a side whose peak RSS, predicted from its shorter lengths, exceeds this share of "
                             "the memory available when it would start")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return 0
    if args.summarize:
        workdir = Path(args.summarize)
        config = json.loads((workdir / "model" / "config.json").read_text())
        rows = load_rows(workdir, config)
        report = summarize([r for r in rows if "error" not in r])
        print_tables(rows, report)
        return 0
    import torch

    from throughput import LLAMAFACTORY_VENV, bench_model, build_local_model, llamafactory_python

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lorakit-long-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORAKIT_CACHE", str(workdir / "cache"))
    if not (workdir / "model" / "config.json").exists():
        build_local_model(workdir / "model", 32000, max_positions=MAX_POSITIONS)
    model_dir = bench_model(str(workdir / "model"), workdir / "model-bench")
    config = json.loads((workdir / "model" / "config.json").read_text())
    sides = [s for s in args.sides.split(",") if s]
    lf_python = llamafactory_python() if "llamafactory" in sides else None
    if "llamafactory" in sides and lf_python is None:
        print(f"note: llamafactory side skipped: no LLaMA-Factory in {LLAMAFACTORY_VENV} "
              "(bash bench/setup_llamafactory.sh)", file=sys.stderr)
        sides.remove("llamafactory")
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"workdir {workdir}", file=sys.stderr)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        data = workdir / f"docs-{length}.jsonl"
        steps = args.long_steps if length >= 16384 else args.steps
        sizes = write_documents(data, model_dir, length, steps, args.seed)
        for index, side in enumerate(sides if length % 2 == 0 else list(reversed(sides))):
            spec = {"side": side, "stage": "sft", "length": length, "model": model_dir, "data": str(data),
                    "seed": args.seed, "device": "cpu", "gradient_checkpointing": True, "trace_memory": True,
                    # the LLaMA-Factory side's names: one row of cutoff_len per step, nothing truncated
                    "pack_length": length + 8, "packed_batch": 1, "batch": 1, "epochs": 1,
                    "learning_rate": LEARNING_RATE, "repeat": 0, "lorakit_set": args.lorakit_set}
            need = predicted_rss_gb([r for r in rows if r["side"] == side], length)
            room = available_gb() * args.memory_share
            if need is not None and need > room:
                # a side that would take the shared machine's memory is not run: its slope says what it would need
                row = {"side": side, "length": length, "skipped": f"predicted peak RSS {need:.1f} GB > {room:.1f} GB "
                                                                   f"({args.memory_share:.0%} of the memory available)"}
                rows.append(row)
                print(f"  {length:6d} {side:20s} skipped: {row['skipped']}", file=sys.stderr)
                continue
            result = run_side(spec, workdir, lf_python)
            row = measured(result, config) if "error" not in result else result
            rows.append(row)
            if "error" in row:
                print(f"  {length:6d} {side:20s} failed: {row['error']}", file=sys.stderr)
            else:
                print(f"  {length:6d} {side:20s} {row['tokens_per_s']:8.1f} tok/s {row['gflops_per_s']:7.2f} GFLOP/s "
                      f"RSS {row['peak_rss_gb']:.2f} GB alloc peak {row['peak_alloc_mb']:.0f} MB "
                      f"({row['alloc_bytes_per_token']:,.0f} B/token) docs {min(sizes)}-{max(sizes)} tokens",
                      file=sys.stderr)
    good = [r for r in rows if "error" not in r and "skipped" not in r]
    check_trained_tokens(good)
    report = summarize(good)
    (workdir / "report.json").write_text(json.dumps({"rows": rows, **report}, indent=1))
    if args.json:
        print(json.dumps({"rows": rows, **report}, indent=1))
    else:
        print_tables(rows, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
