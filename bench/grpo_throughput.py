"""GRPO throughput of lorakit against TRL's GRPOTrainer, side by side, each side in a fresh process.

    python bench/throughput.py --stage grpo                       # SmolLM2-135M-Instruct when its GGUF is fetched
    python bench/grpo_throughput.py --steps 6 --repeats 2 --num-generations 8 --completion-length 16
    python bench/grpo_throughput.py --model builtin:tiny-llama --steps 4   # seconds, for a smoke run

Sides:
  trl           TRL GRPOTrainer with its own defaults (an fp32 model, bf16 autocast, gradient checkpointing on, its
                fused LM head, generation with the LoRA branch unmerged)
  trl-fp32      TRL GRPOTrainer in fp32 without gradient checkpointing (lorakit's settings on a CPU without native
                bf16)
  trl-bf16      TRL GRPOTrainer with the base loaded in bf16, bf16 on, no gradient checkpointing (lorakit's settings
                on a CPU with native bf16: avx512_bf16 / AMX, where bf16 matmuls are faster than fp32 ones)
  lorakit       `lorakit grpo`'s trainer with its defaults (lorakit.train.grpo.build_grpo_trainer): the same
                GRPOTrainer, plus the plain LM head at the sampling temperature, generation with merged LoRA weights
                and one prefill per group; train.precision auto: bf16 on a CPU with native bf16, else fp32
  lorakit-fp32  lorakit with train.precision: fp32
All sides: the same model, LoRA (r=16, alpha=32, dropout 0, all linear layers), prompts in the same order, reward
(lorakit's exact_answer), seed, learning rate (constant), num_generations, max_completion_length, temperature 1.0,
beta 0, loss dapo, one prompt group per micro-batch step.

Printed per side (median of the repeats): seconds per step, generated tokens/s (completion tokens sampled per
wall-second of training), trained tokens/s (tokens through the training forward, prompt + completion, per second),
peak RSS of the process, and where a step's time goes: generation (`model.generate`), scoring (the reward calls) and
the rest (log-probs, backward, optimizer). Then the reward curve per side (mean reward per step) and lorakit's ratio to
the best TRL side. Timings on a shared machine vary with its load: compare sides of one run, never across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

SIDES = ("trl", "trl-fp32", "trl-bf16", "lorakit-fp32", "lorakit")
# TRL's sides: the dtype its model loads in and the GRPOConfig fields each sets (build_trl)
TRL_SIDES = {"trl": {"dtype": "float32", "args": {}},
             "trl-fp32": {"dtype": "float32", "args": {"bf16": False, "gradient_checkpointing": False}},
             "trl-bf16": {"dtype": "bfloat16", "args": {"bf16": True, "gradient_checkpointing": False}}}
# lorakit's sides: the recipe settings each adds to the common ones (build_lorakit)
LORAKIT_SIDES = {"lorakit": (), "lorakit-fp32": ("train.precision=fp32",)}
PROMPTS = REPO / "examples" / "data" / "smollm2" / "arith-train.jsonl"


def default_model() -> str:
    from tests.real.artifacts import smollm2_gguf

    path = smollm2_gguf()
    return str(path) if path is not None else "builtin:tiny-llama"


def model_and_tokenizer_source(name: str):
    from lorakit.model import load_tokenizer, resolve_model_source

    source = resolve_model_source(name)
    return source.location, load_tokenizer(source)


def prompt_rows(path: Path, count: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows[:count]]


# ---------------------------------------------------------------------------------------------------------- worker
class Timers:
    """Wall time in generate and in the rewards, around the calls every side makes."""

    def __init__(self):
        self.generation = 0.0
        self.scoring = 0.0

    def timed(self, function, counter: str):
        """`function`, adding its wall time to the counter named (generation or scoring)."""
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                setattr(self, counter, getattr(self, counter) + time.perf_counter() - started)

        call.__name__ = getattr(function, "__name__", "reward")  # TRL names a reward's metrics after it
        return call

    def wrap_generate(self, model) -> None:
        model.generate = self.timed(model.generate, "generation")

    def wrap_reward(self, function):
        return self.timed(function, "scoring")


def build_trl(spec: dict, workdir: Path, tokenizer, model_dir: str, reward, side: str):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from lorakit.chat_template import Stops

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, TRL_SIDES[side]["dtype"]))
    model.generation_config.eos_token_id = Stops.of(tokenizer, model.generation_config.eos_token_id).ids
    extra = TRL_SIDES[side]["args"]
    args = GRPOConfig(output_dir=str(workdir / "out"), per_device_train_batch_size=spec["num_generations"],
                      gradient_accumulation_steps=1, max_steps=spec["steps"], learning_rate=spec["learning_rate"],
                      lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
                      seed=spec["seed"], data_seed=spec["seed"], num_generations=spec["num_generations"],
                      max_completion_length=spec["completion_length"], temperature=1.0, use_cpu=True,
                      disable_tqdm=True, **extra)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                       train_dataset=Dataset.from_list(prompt_rows(Path(spec["prompts"]), spec["rows"])),
                       processing_class=tokenizer, peft_config=peft)


def build_lorakit(spec: dict, workdir: Path, extra: tuple[str, ...] = ()):
    from lorakit.config import load_recipe
    from lorakit.outputs import RunFolder
    from lorakit.train.grpo import build_grpo_trainer

    data = workdir / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in prompt_rows(Path(spec["prompts"]), spec["rows"])))
    overrides = ["lora.r=16", "lora.alpha=32", "lora.dropout=0.0", "train.gradient_checkpointing=false",
                 f"train.micro_batch_size={spec['num_generations']}", "train.gradient_accumulation_steps=1",
                 f"train.learning_rate={spec['learning_rate']}", "train.lr_scheduler_type=constant",
                 "train.warmup_ratio=0.0", "train.logging_steps=1", "train.save_steps=100000",
                 f"train.seed={spec['seed']}", f"grpo.num_generations={spec['num_generations']}",
                 f"grpo.max_completion_length={spec['completion_length']}", "grpo.temperature=1.0",
                 "grpo.samples_steps=100000", "data.max_length=512", "preflight=false", *extra]
    recipe = load_recipe("grpo", None, overrides, {"model": spec["model"], "data": str(data),
                                                  "max_steps": spec["steps"], "output_dir": str(workdir / "run"),
                                                  "rewards": ["exact_answer"]})
    return build_grpo_trainer(recipe, RunFolder.open(recipe.output_dir)).trainer


def run_worker(spec_file: str) -> None:
    import torch
    from transformers import TrainerCallback

    from lorakit.rewards.builtin import exact_answer

    spec = json.loads(Path(spec_file).read_text())
    workdir = Path(spec["workdir"])
    torch.manual_seed(spec["seed"])
    timers = Timers()
    if spec["side"].startswith("lorakit"):
        trainer = build_lorakit(spec, workdir, LORAKIT_SIDES[spec["side"]])
        for function in trainer.reward_funcs:
            function.reward.function = timers.wrap_reward(function.reward.function)
    else:
        model_dir, tokenizer = model_and_tokenizer_source(spec["model"])
        trainer = build_trl(spec, workdir, tokenizer, model_dir, timers.wrap_reward(exact_answer("answer")),
                            spec["side"])
    timers.wrap_generate(trainer.model)
    logs: list[dict] = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                kept.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                           if isinstance(v, (int, float))}})

    kept = logs
    trainer.add_callback(Keep())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    steps = len(logs)
    completions = spec["num_generations"]
    generated = sum(r["completions/mean_length"] * completions for r in logs)
    trained = sum(r.get("num_tokens", 0) for r in logs[-1:])  # prompt + completion tokens seen, cumulative
    result = {
        "side": spec["side"], "seconds": seconds, "steps": steps, "s_per_step": seconds / max(steps, 1),
        "generated_tokens_per_s": generated / seconds, "trained_tokens_per_s": trained / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "generation_s_per_step": timers.generation / max(steps, 1),
        "scoring_s_per_step": timers.scoring / max(steps, 1),
        "rewards": [round(r["reward"], 4) for r in logs],
        "mean_length": [round(r["completions/mean_length"], 2) for r in logs],
    }
    result["other_s_per_step"] = result["s_per_step"] - result["generation_s_per_step"] - result["scoring_s_per_step"]
    Path(spec["result"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------------------ main
def run_side(spec: dict, workdir: Path) -> dict:
    side_dir = Path(tempfile.mkdtemp(prefix=f"{spec['side']}-", dir=workdir))
    spec = {**spec, "workdir": str(side_dir), "result": str(side_dir / "result.json")}
    (side_dir / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(side_dir / "log.txt", "w") as log:
        code = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--worker", str(side_dir / "spec.json")],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"side {spec['side']} failed (exit {code}); see {side_dir / 'log.txt'}")
    return json.loads((side_dir / "result.json").read_text())


COLUMNS = (("s_per_step", "s/step", False), ("generated_tokens_per_s", "generated tok/s", True),
           ("trained_tokens_per_s", "trained tok/s", True), ("peak_rss_mb", "peak RSS MB", False),
           ("generation_s_per_step", "generate s/step", False), ("scoring_s_per_step", "score s/step", False),
           ("other_s_per_step", "logps+backward s/step", False))


def summarize(results: list[dict]) -> dict:
    by_side: dict[str, list[dict]] = {}
    for result in results:
        by_side.setdefault(result["side"], []).append(result)
    summary = {}
    for side, runs in by_side.items():
        summary[side] = {key: statistics.median(r[key] for r in runs) for key, _, _ in COLUMNS}
        summary[side]["rewards"] = runs[0]["rewards"]
        summary[side]["mean_length"] = runs[0]["mean_length"]
        summary[side]["repeats"] = len(runs)
    return summary


def print_summary(summary: dict, spec: dict) -> None:
    print(f"\nGRPO on {spec['model']}: {spec['steps']} steps x 1 prompt x {spec['num_generations']} completions of "
          f"<= {spec['completion_length']} tokens, LoRA r16, CPU ({os.cpu_count()} cores); median of "
          f"{max(s['repeats'] for s in summary.values())} repeat(s)")
    header = ["side"] + [label for _, label, _ in COLUMNS]
    print(" | ".join(header))
    for side, row in summary.items():
        print(" | ".join([side] + [f"{row[key]:.3f}" if "s_per_step" in key else f"{row[key]:.1f}"
                                   for key, _, _ in COLUMNS]))
    peers = [s for s in summary if not s.startswith("lorakit")]
    for side in (s for s in summary if s.startswith("lorakit") and peers):
        best = min(peers, key=lambda s: summary[s]["s_per_step"])
        ours, theirs = summary[side], summary[best]
        print(f"\n{side} vs the best TRL side ({best}): {theirs['s_per_step'] / ours['s_per_step']:.2f}x steps/s, "
              f"{ours['generated_tokens_per_s'] / theirs['generated_tokens_per_s']:.2f}x generated tok/s, peak RSS "
              f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x")
    print("\nmean reward per step:")
    for side, row in summary.items():
        print(f"  {side:12s} {row['rewards']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a .gguf, folder, hub id or builtin:tiny-llama (default: SmolLM2-135M's GGUF "
                                        "when fetched, else builtin:tiny-llama)")
    parser.add_argument("--prompts", default=str(PROMPTS))
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--workdir")
    parser.add_argument("--json", action="store_true")
    args, _ = parser.parse_known_args()
    if args.worker:
        run_worker(args.worker)
        return
    bench(args)


def bench(args) -> dict:
    spec = {"model": args.model or default_model(), "prompts": args.prompts, "rows": args.rows, "steps": args.steps,
            "num_generations": args.num_generations, "completion_length": args.completion_length,
            "learning_rate": args.learning_rate, "seed": args.seed}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lorakit-grpo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    results = []
    for repeat in range(args.repeats):
        order = sides if repeat % 2 == 0 else list(reversed(sides))  # alternate, so load drifts hit both ends
        for side in order:
            print(f"repeat {repeat + 1}/{args.repeats}: {side}...", file=sys.stderr, flush=True)
            results.append(run_side({**spec, "side": side}, workdir))
    summary = summarize(results)
    if args.json:
        print(json.dumps({"spec": spec, "summary": summary, "runs": results}, indent=2))
    else:
        print_summary(summary, spec)
    return summary


if __name__ == "__main__":
    main()
