"""Side-by-side training throughput: plain TRL with its defaults vs lorakit, in one process, alternating repeats.

    python bench/throughput.py                    # CPU: a ~50M-parameter Llama built locally, 48 chats of 20-400 tokens
    python bench/throughput.py --repeats 3 --steps 6
    python bench/throughput.py --stage dpo           # SFT, DPO or both (default)
    python bench/throughput.py --model Qwen/Qwen2.5-0.5B   # a real model (on a GPU)

Both sides train the same LoRA (r=16, alpha=32, all linear layers) on the same prompt/completion chats with the same
seed, batch, steps, learning rate, precision and gradient checkpointing, and both train on the completion only; what
differs is what each does by default (batching, loss path). Printed per side: useful (non-padding) tokens/s,
seconds/step, peak RSS during training (and peak CUDA memory on a GPU), final loss; then the ratios lorakit / TRL.
Model FLOPs utilization uses FLOPs/token = (4 + 2 * gradient_checkpointing) * N, N = parameters in the linear layers
(frozen base: forward 2N, input-gradients 2N, recomputation 2N), against this machine's fp32 (GPU: bf16) matmul peak
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def matmul_peak_flops(device: str) -> float:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n = 4096 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def build_local_model(folder: Path, vocab_size: int) -> Path:
    """A ~50M-parameter Llama with a 32k vocabulary (so the loss path costs what it costs on real models)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lorakit.chat_template import CHATML
    from lorakit.tiny import TinySpec, build_tokenizer

    tokenizer = build_tokenizer(TinySpec())
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         initializer_range=0.05)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_chats(path: Path, rows: int, seed: int) -> None:
    """Prompt/completion chats with a realistic spread: lengths log-uniform between ~20 and ~400 tokens."""
    from lorakit.tiny import corpus_lines

    words = " ".join(corpus_lines()).split()
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(rows):
            total = int(20 * 20 ** rng.random())
            prompt_words = max(3, total // 4)
            prompt = " ".join(rng.choice(words) for _ in range(prompt_words))
            answer = " ".join(rng.choice(words) for _ in range(max(3, total - prompt_words)))
            handle.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                     "completion": [{"role": "assistant", "content": answer}]}) + "\n")


def lora_settings():
    return dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def plain_trl_args(args, out: Path, learning_rate: float) -> dict:
    """TRL's defaults but for what both sides must share: steps, batch, seed, length, precision, checkpointing."""
    return dict(
        output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=learning_rate,
        seed=args.seed, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        max_length=1024, use_cpu=args.device == "cpu", bf16=args.device == "cuda",
        gradient_checkpointing=None, activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
    )


def run_plain_trl(model_dir: str, data_file: Path, args, out: Path):
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from lorakit.chat_template import CHATML

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML  # the same template lorakit gives a base model
    dataset = load_dataset("json", data_files=str(data_file), split="train")
    config = SFTConfig(**plain_trl_args(args, out, learning_rate=1e-4))
    trainer = SFTTrainer(model=model_dir, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(**lora_settings()))
    return trainer, [len(ids) for ids in trainer.train_dataset["input_ids"]]


def run_lorakit(model_dir: str, data_file: Path, args, out: Path):
    from lorakit.config import load_recipe
    from lorakit.runs import RunFolder
    from lorakit.train.sft import build_sft_trainer

    recipe = load_recipe("sft", None, [
        "lora.dropout=0.0", "train.gradient_accumulation_steps=1", f"train.micro_batch_size={args.batch}",
        f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}", "train.warmup_ratio=0.0",
        "train.lr_scheduler_type=linear", "train.logging_steps=1", "train.save_steps=100000", "data.max_length=1024",
        "preflight=false",
    ], {"model": model_dir, "data": str(data_file), "output_dir": str(out), "max_steps": args.steps,
        "learning_rate": 1e-4, "seed": args.seed})
    setup = build_sft_trainer(recipe, RunFolder.open(out))
    return setup.trainer, setup.data.train["length"]


def write_pairs(path: Path, rows: int, seed: int) -> None:
    """Preference pairs with the same spread: prompt, a chosen answer and a rejected one of a different length."""
    from lorakit.tiny import corpus_lines

    words = " ".join(corpus_lines()).split()
    rng = random.Random(seed + 1)
    with open(path, "w") as handle:
        for _ in range(rows):
            total = int(20 * 15 ** rng.random())
            say = lambda n: " ".join(rng.choice(words) for _ in range(max(3, n)))  # noqa: E731
            handle.write(json.dumps({
                "prompt": [{"role": "user", "content": say(total // 3)}],
                "chosen": [{"role": "assistant", "content": say(total)}],
                "rejected": [{"role": "assistant", "content": say(int(total * (0.5 + rng.random())))}]}) + "\n")


def dpo_tokens(model_dir: str, pairs_file: Path) -> list[int]:
    """Useful tokens per pair (prompt + chosen, prompt + rejected), counted once with lorakit's tokenization; both
    sides use the same template and tokenizer, so the count is theirs too."""
    from transformers import AutoTokenizer

    from lorakit.config import DataSection
    from lorakit.data.preference import tokenize_preferences
    from lorakit.chat_template import CHATML

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = tokenizer.chat_template or CHATML
    tokenized, _, _, _ = tokenize_preferences(str(pairs_file), DataSection(train=str(pairs_file), max_length=1024),
                                              512, tokenizer)
    return [2 * len(p) + len(c) + len(r) for p, c, r in
            zip(tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"])]


def run_plain_trl_dpo(model_dir: str, data_file: Path, args, out: Path, lengths: list[int]):
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from lorakit.chat_template import CHATML

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = tokenizer.chat_template or CHATML
    dataset = load_dataset("json", data_files=str(data_file), split="train")
    config = DPOConfig(**plain_trl_args(args, out, learning_rate=5e-5))
    trainer = DPOTrainer(model=model_dir, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(**lora_settings()))
    return trainer, lengths


def run_lorakit_dpo(model_dir: str, data_file: Path, args, out: Path, lengths: list[int]):
    from lorakit.config import load_recipe
    from lorakit.runs import RunFolder
    from lorakit.train.dpo import build_dpo_trainer

    recipe = load_recipe("dpo", None, [
        "lora.dropout=0.0", "train.gradient_accumulation_steps=1", f"train.micro_batch_size={args.batch}",
        f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}", "train.warmup_ratio=0.0",
        "train.lr_scheduler_type=linear", "train.logging_steps=1", "train.save_steps=100000", "data.max_length=1024",
        "dpo.max_prompt_length=512", "preflight=false",
    ], {"model": model_dir, "data": str(data_file), "output_dir": str(out), "max_steps": args.steps,
        "learning_rate": 5e-5, "seed": args.seed})
    setup = build_dpo_trainer(recipe, RunFolder.open(out))
    return setup.trainer, lengths


def measure(label: str, build, args, workdir: Path, repeat: int) -> dict:
    import torch

    from transformers.trainer_callback import PrinterCallback

    out = workdir / f"{label}-{repeat}"
    trainer, lengths = build(out)
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts would bury the results
    steps = args.steps
    consumed = (steps * args.batch) // len(lengths) * sum(lengths) + sum(lengths[: (steps * args.batch) % len(lengths)])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "useful_tokens": consumed,
        "tokens_per_s": consumed / seconds,
        "s_per_step": seconds / steps,
        "peak_rss_gb": rss.peak / 1e9,
        "final_loss": losses[-1],
        "losses": losses,
    }
    if args.device == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    del trainer
    return result


def linear_parameters(model_dir: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub id or folder (default: a ~50M Llama built locally)")
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--stage", choices=("sft", "dpo", "both"), default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from lorakit.tiny import cache_dir

    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    workdir = Path(tempfile.mkdtemp(prefix="lorakit-bench-"))
    os.environ.setdefault("LORAKIT_CACHE", str(workdir / "cache"))
    model_dir = args.model or str(build_local_model(workdir / "model", 32000))
    data_file = workdir / "chats.jsonl"
    write_chats(data_file, args.rows, args.seed)
    print(f"device {args.device}, threads {torch.get_num_threads()}, model {args.model or 'local ~50M Llama'}, "
          f"{args.rows} chats, batch {args.batch}, {args.steps} steps, gradient checkpointing "
          f"{args.gradient_checkpointing}, cache {cache_dir()}", file=sys.stderr)

    pairs_file = workdir / "pairs.jsonl"
    write_pairs(pairs_file, args.rows, args.seed)
    stages = {
        "sft": {"trl": lambda out: run_plain_trl(model_dir, data_file, args, out),
                "lorakit": lambda out: run_lorakit(model_dir, data_file, args, out)},
    }
    if args.stage in ("dpo", "both"):
        lengths = dpo_tokens(model_dir, pairs_file)
        stages["dpo"] = {"trl": lambda out: run_plain_trl_dpo(model_dir, pairs_file, args, out, lengths),
                         "lorakit": lambda out: run_lorakit_dpo(model_dir, pairs_file, args, out, lengths)}
    if args.stage == "dpo":
        del stages["sft"]

    peak = matmul_peak_flops(args.device)
    flops_per_token = (4 + 2 * args.gradient_checkpointing) * linear_parameters(model_dir)
    report = {"device": args.device, "matmul_peak_gflops": peak / 1e9, "flops_per_token": flops_per_token}
    for stage, sides in stages.items():
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))  # alternate who goes first
            for name in order:
                results[name].append(measure(f"{stage}-{name}", sides[name], args, workdir, repeat))
                r = results[name][-1]
                print(f"  {stage} repeat {repeat} {name:8s} {r['tokens_per_s']:8.1f} tok/s  {r['s_per_step']:6.2f} "
                      f"s/step  peak RSS {r['peak_rss_gb']:.2f} GB  final loss {r['final_loss']:.4f}", file=sys.stderr)
        # DPO adds a reference forward (2N per token) to the policy's training FLOPs
        stage_flops = flops_per_token + (2 * linear_parameters(model_dir) if stage == "dpo" else 0)
        summary = {}
        for name, runs in results.items():
            row = {key: statistics.median(r[key] for r in runs)
                   for key in ("tokens_per_s", "s_per_step", "peak_rss_gb", "final_loss")
                   + (("peak_cuda_gb",) if args.device == "cuda" else ())}
            row["mfu"] = row["tokens_per_s"] * stage_flops / peak
            row["loss_curve"] = runs[0]["losses"]
            summary[name] = row
        ratios = {
            "tokens_per_s": summary["lorakit"]["tokens_per_s"] / summary["trl"]["tokens_per_s"],
            "s_per_step": summary["lorakit"]["s_per_step"] / summary["trl"]["s_per_step"],
            "peak_rss": summary["lorakit"]["peak_rss_gb"] / summary["trl"]["peak_rss_gb"],
            "final_loss": summary["lorakit"]["final_loss"] / summary["trl"]["final_loss"],
        }
        report[stage] = summary
        report[f"{stage}_ratio_lorakit_over_trl"] = ratios
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for stage in stages:
        summary, ratios = report[stage], report[f"{stage}_ratio_lorakit_over_trl"]
        print(f"\n{stage.upper()} ({args.device}; matmul peak {peak / 1e9:.0f} GFLOP/s)")
        print(f"{'':10s}{'tok/s':>10s}{'s/step':>9s}{'peak RSS GB':>13s}{'final loss':>12s}{'MFU':>8s}")
        for name, row in summary.items():
            print(f"{name:10s}{row['tokens_per_s']:10.1f}{row['s_per_step']:9.2f}{row['peak_rss_gb']:13.2f}"
                  f"{row['final_loss']:12.4f}{100 * row['mfu']:7.1f}%")
        print(f"{'ratio':10s}{ratios['tokens_per_s']:9.2f}x{ratios['s_per_step']:8.2f}x{ratios['peak_rss']:12.2f}x"
              f"{ratios['final_loss']:11.3f}x")


if __name__ == "__main__":
    main()
