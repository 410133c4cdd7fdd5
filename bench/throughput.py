"""Training throughput of lorakit against the best configuration of each peer, side by side, alternating order.

    python bench/throughput.py                     # CPU: a ~50M-parameter Llama built locally, 48 chats / 48 pairs
    python bench/throughput.py --repeats 3 --epochs 2
    python bench/throughput.py --stage dpo --sides lorakit,trl
    python bench/throughput.py --model Qwen/Qwen2.5-0.5B   # a real model (on a GPU)
    bash bench/setup_llamafactory.sh               # once, to add the LLaMA-Factory side (its own venv)

Sides (each runs in a fresh process, so one side's memory never shows in another's peak):
  SFT  lorakit            lorakit's defaults (padding-free rows after its exactness probe, plain CE head on CPU)
       trl                plain TRL SFTTrainer defaults (rows padded to the longest of the batch)
       trl-padding-free   TRL `padding_free=True`, completion-only loss (what TRL's docs recommend)
       trl-bfd            TRL `packing=True, packing_strategy="bfd"` into rows of --pack-length tokens
       llamafactory       LLaMA-Factory `neat_packing: true` (block-diagonal mask, rows of cutoff_len), when its venv
                          exists (bench/setup_llamafactory.sh); skipped with a note otherwise
       lorakit-sdpa       an ablation, only with --sides: lorakit with `model.attn_implementation: sdpa`, i.e. its
                          packed rows under transformers' block-diagonal mask instead of lorakit's per-example
                          attention (lorakit/train/attention.py), to measure what that attention gains; not a peer
  DPO  lorakit, trl (TRL DPOTrainer defaults), llamafactory (LLaMA-Factory DPO, rows padded to the longest),
       lorakit-sdpa (the same ablation: rows a few sequences wide under the block-diagonal mask)

Every side trains the same LoRA (r=16, alpha=32, dropout 0, all linear layers) of the same model on the same rows,
with the same seed, learning rate and schedule (linear, no warm-up), optimizer (adamw_torch), precision, gradient
checkpointing (non-reentrant), and trains on completions only, for the same number of epochs. Steps are equal for
the sides that batch --batch examples per step; the packing sides (trl-bfd, llamafactory SFT) put about the same
tokens in a step (--packed-batch rows of --pack-length, by default the number of such rows that holds --batch
average examples), so their step count differs slightly. What must be equal is checked: the trained tokens (every
position whose log-probability enters the loss), counted from the micro-batches that reach each trainer.

Printed per side (median of the repeats): trained tokens per wall-second and per CPU-second of the training process,
real (non-padding) tokens/s, seconds/step, peak RSS of the training process, padding in the batches, first and final
loss; then lorakit's ratio to the best peer of each column, and the load other programs put on the machine while each
side trained (busy CPU seconds not spent by the side itself, per wall-second).
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

LLAMAFACTORY_VENV = Path(os.environ.get("LLAMAFACTORY_VENV", "/work/venvs/llamafactory"))
SFT_SIDES = ("lorakit", "trl", "trl-padding-free", "trl-bfd", "llamafactory")
DPO_SIDES = ("lorakit", "trl", "llamafactory")
LEARNING_RATE = {"sft": 1e-4, "dpo": 5e-5}
LORA = dict(r=16, alpha=32, dropout=0.0)
MAX_PROMPT_LENGTH = 512


# ----------------------------------------------------------------------------------------------------------- data
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


def _words():
    from lorakit.tiny import corpus_lines

    return " ".join(corpus_lines()).split()


def write_chats(path: Path, rows: int, seed: int, max_words: int = 400) -> None:
    """Prompt/completion chats with a realistic spread: lengths log-uniform between ~20 and `max_words` words."""
    words, rng = _words(), random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(rows):
            total = int(20 * (max_words / 20) ** rng.random())
            prompt_words = max(3, total // 4)
            prompt = " ".join(rng.choice(words) for _ in range(prompt_words))
            answer = " ".join(rng.choice(words) for _ in range(max(3, total - prompt_words)))
            handle.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                     "completion": [{"role": "assistant", "content": answer}]}) + "\n")


def write_pairs(path: Path, rows: int, seed: int, max_words: int = 300) -> None:
    """Preference pairs with the same spread: prompt, a chosen answer and a rejected one of a different length."""
    words, rng = _words(), random.Random(seed + 1)
    with open(path, "w") as handle:
        for _ in range(rows):
            total = int(20 * (max_words / 20) ** rng.random())
            say = lambda n: " ".join(rng.choice(words) for _ in range(max(3, n)))  # noqa: E731
            handle.write(json.dumps({
                "prompt": [{"role": "user", "content": say(total // 3)}],
                "chosen": [{"role": "assistant", "content": say(total)}],
                "rejected": [{"role": "assistant", "content": say(int(total * (0.5 + rng.random())))}]}) + "\n")


# The chat template every side renders with: ChatML that writes nothing after the last end-of-turn token. lorakit
# trains a reply up to its stop token, while TRL and LLaMA-Factory train the whole rendered completion, which under
# ChatML ends '<|im_end|>\n'; with nothing after the final stop token all sides train the very same tokens.
BENCH_CHATML = (
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '\\n<|im_start|>assistant\\n' }}{%- endif %}"
)


def bench_model(model_dir: str, folder: Path) -> str:
    """`model_dir`'s weights (linked, not copied) with its tokenizer carrying BENCH_CHATML, for every side."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if "<|im_end|>" not in tokenizer.get_vocab():
        raise SystemExit(f"{model_dir}: the bench renders ChatML, and this tokenizer has no <|im_end|> token")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokenizer.chat_template = BENCH_CHATML
    tokenizer.save_pretrained(folder)
    if Path(model_dir).is_dir():
        source = Path(model_dir).resolve()
    else:  # a hub id (a GPU machine with network)
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(model_dir))
    for item in source.iterdir():
        if item.is_file() and not (folder / item.name).exists():
            (folder / item.name).symlink_to(item)
    return str(folder)


def mean_example_tokens(model_dir: str, data_file: Path) -> float:
    """Average tokens of a chat under the shared template (sizes the packing sides' batches)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for line in data_file.read_text().splitlines():
        row = json.loads(line)
        messages = row["prompt"] + row.get("completion", row.get("chosen", []))
        lengths.append(len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)))
    return sum(lengths) / len(lengths)


# ---------------------------------------------------------------------------------------------------------- sides
def shared_trl_args(spec: dict, batch: int) -> dict:
    """What every TRL side shares with lorakit: epochs, batch, seed, schedule, optimizer, precision, checkpointing."""
    return dict(
        output_dir=spec["out"], per_device_train_batch_size=batch, num_train_epochs=spec["epochs"],
        max_steps=-1, learning_rate=spec["learning_rate"], lr_scheduler_type="linear", warmup_steps=0,
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"], data_seed=spec["seed"],
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=spec["device"] == "cpu", bf16=spec["device"] == "cuda",
        gradient_checkpointing=None, activation_checkpointing=spec["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False},
    )


def peft_lora():
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")


def trl_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)  # carries BENCH_CHATML (bench_model)


def build_trl_sft(spec: dict, variant: str):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    extra: dict = {"max_length": 1024}
    batch = spec["batch"]
    if variant == "trl-padding-free":
        # TRL refuses max_length without packing here (it would not be enforced); the chats are shorter anyway
        extra = {"padding_free": True, "completion_only_loss": True, "max_length": None}
    elif variant == "trl-bfd":
        extra = {"packing": True, "packing_strategy": "bfd", "completion_only_loss": True,
                 "max_length": spec["pack_length"]}
        batch = spec["packed_batch"]
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    config = SFTConfig(**shared_trl_args(spec, batch), **extra)
    return SFTTrainer(model=spec["model"], args=config, train_dataset=dataset,
                      processing_class=trl_tokenizer(spec["model"]), peft_config=peft_lora())


def build_trl_dpo(spec: dict):
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    dataset = load_dataset("json", data_files=spec["data"], split="train")
    config = DPOConfig(**shared_trl_args(spec, spec["batch"]))
    return DPOTrainer(model=spec["model"], args=config, train_dataset=dataset,
                      processing_class=trl_tokenizer(spec["model"]), peft_config=peft_lora())


def lorakit_overrides(spec: dict) -> list[str]:
    return [
        f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}", f"lora.dropout={LORA['dropout']}",
        "train.gradient_accumulation_steps=1", f"train.micro_batch_size={spec['batch']}",
        f"train.gradient_checkpointing={str(spec['gradient_checkpointing']).lower()}", "train.warmup_ratio=0.0",
        "train.lr_scheduler_type=linear", "train.optim=adamw_torch", "train.weight_decay=0.0",
        "train.max_grad_norm=1.0", "train.logging_steps=1", "train.save_steps=100000", "data.max_length=1024",
        "preflight=false",
    ]


def build_lorakit(spec: dict, stage: str):
    from lorakit.config import load_recipe
    from lorakit.outputs import RunFolder

    overrides = lorakit_overrides(spec)
    if spec["side"] == "lorakit-sdpa":  # the ablation: transformers' block-diagonal mask over the packed rows
        overrides.append("model.attn_implementation=sdpa")
    flags = {"model": spec["model"], "data": spec["data"], "output_dir": spec["out"], "epochs": spec["epochs"],
             "learning_rate": spec["learning_rate"], "seed": spec["seed"]}
    if stage == "sft":
        from lorakit.train.sft import build_sft_trainer

        setup = build_sft_trainer(load_recipe("sft", None, overrides, flags), RunFolder.open(spec["out"], force=True))
    else:
        from lorakit.train.dpo import build_dpo_trainer

        overrides.append(f"dpo.max_prompt_length={MAX_PROMPT_LENGTH}")
        setup = build_dpo_trainer(load_recipe("dpo", None, overrides, flags), RunFolder.open(spec["out"], force=True))
    return setup.trainer, {"batching": setup.speed.reasons.get("batching"), "loss_head": setup.speed.loss,
                           "attention": setup.speed.attention}


def run_worker(spec_path: str) -> None:
    """One side, one stage, in this process: build its trainer, train, write what the recorder saw."""
    import torch
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from measure import Recorder, write_result

    spec = json.loads(Path(spec_path).read_text())
    side, stage = spec["side"], spec["stage"]
    info: dict = {}
    if side in ("lorakit", "lorakit-sdpa"):
        trainer, info = build_lorakit(spec, stage)
    elif stage == "sft":
        trainer = build_trl_sft(spec, side)
    else:
        trainer = build_trl_dpo(spec)
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts would bury the results
    recorder = Recorder(profile=spec.get("profile"))
    recorder.attach(trainer)
    trainer.train()
    import peft
    import trl

    write_result(spec["result"], recorder.result(
        side, stage, rows=len(trainer.train_dataset), **info,
        versions={"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                  "peft": peft.__version__}))


# ---------------------------------------------------------------------------------------------------------- runner
def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (every core, every process)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def llamafactory_python() -> Path | None:
    python = LLAMAFACTORY_VENV / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", "import llamafactory"], capture_output=True)
    return python if probe.returncode == 0 else None


def run_side(spec: dict, workdir: Path, lf_python: Path | None, quiet: bool = True) -> dict:
    """Run one side in a fresh process; return its result plus the machine load while it ran."""
    name = f"{spec['stage']}-{spec['side']}-{spec['repeat']}"
    spec = {**spec, "out": str(workdir / name), "result": str(workdir / f"{name}.json")}
    shutil.rmtree(spec["out"], ignore_errors=True)  # a kept --workdir holds the previous bench's run folders
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    if spec["side"] == "llamafactory":
        command = [str(lf_python), str(BENCH / "llamafactory_side.py"), str(spec_path)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    log = workdir / f"{name}.log"
    busy0, children0, wall0, load0 = cpu_busy_seconds(), os.times(), time.perf_counter(), os.getloadavg()
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=str(BENCH.parent))
    wall = time.perf_counter() - wall0
    children1 = os.times()
    own = (children1.children_user - children0.children_user) + (children1.children_system
                                                                 - children0.children_system)
    if code != 0:
        raise SystemExit(f"side {name} failed (exit {code}); its log: {log}\n" + log.read_text()[-3000:])
    result = json.loads(Path(spec["result"]).read_text())
    result["other_load"] = max(cpu_busy_seconds() - busy0 - own, 0.0) / wall  # cores kept busy by others
    result["loadavg_before"], result["loadavg_after"] = load0[0], os.getloadavg()[0]
    Path(spec["result"]).write_text(json.dumps(result, indent=1))  # with the load, for --summarize
    return result


def summarize(runs: list[dict]) -> dict:
    row = {key: statistics.median(r[key] for r in runs) for key in
           ("trained_tokens_per_s", "trained_tokens_per_cpu_s", "real_tokens_per_s", "s_per_step", "peak_rss_gb",
            "padding_fraction")}
    row["other_load"] = statistics.median(r.get("other_load", float("nan")) for r in runs)
    first = runs[0]
    row.update(steps=first["steps"], trained=first["tokens"]["trained"], real=first["tokens"]["real"],
               processed=first["tokens"]["processed"], first_loss=first["first_loss"],
               final_loss=statistics.median(r["final_loss"] for r in runs), rows=first.get("rows"),
               row_length=max(b["row_length"] for b in first["batches"]),
               gradient_checkpointing_layers=first["gradient_checkpointing_layers"],
               batching=first.get("batching"), loss_head=first.get("loss_head"), versions=first.get("versions"),
               trained_per_repeat=[r["tokens"]["trained"] for r in runs])
    return row


COLUMNS = (  # key, header, format, better
    ("trained_tokens_per_s", "trained tok/s", "{:.1f}", max),
    ("trained_tokens_per_cpu_s", "tok/CPU-s", "{:.1f}", max),
    ("real_tokens_per_s", "real tok/s", "{:.1f}", max),
    ("s_per_step", "s/step", "{:.2f}", min),
    ("peak_rss_gb", "peak RSS GB", "{:.2f}", min),
    ("padding_fraction", "padding", "{:.0%}", None),
    ("first_loss", "first loss", "{:.4f}", None),
    ("final_loss", "final loss", "{:.4f}", min),
)


def ratios_to_best_peer(summary: dict) -> dict:
    peers = {name: row for name, row in summary.items() if not name.startswith("lorakit")}
    out = {}
    for key, _, _, better in COLUMNS:
        if better is None or not peers or "lorakit" not in summary:
            continue
        best_name = better(peers, key=lambda name: peers[name][key])
        out[key] = {"peer": best_name, "ratio": summary["lorakit"][key] / peers[best_name][key]}
    return out


def check_equal_trained_tokens(stage: str, summary: dict) -> None:
    """Every side must train on the same tokens, or its tokens/s is not comparable."""
    counts = {name: row["trained"] for name, row in summary.items()}
    for name, row in summary.items():
        if len(set(row["trained_per_repeat"])) != 1:
            raise SystemExit(f"{stage} {name}: trained tokens differ between repeats: {row['trained_per_repeat']}")
    if len(set(counts.values())) != 1:
        raise SystemExit(f"{stage}: the sides trained on different numbers of tokens: {counts}")


def print_table(stage: str, summary: dict, ratios: dict, device: str) -> None:
    print(f"\n{stage.upper()} ({device}); trained tokens per side: "
          + ", ".join(f"{n} {r['trained']:,}" for n, r in summary.items()))
    header = f"{'':18s}" + "".join(f"{h:>14s}" for _, h, _, _ in COLUMNS) + f"{'steps':>7s}{'rows x len':>12s}"
    print(header)
    for name, row in summary.items():
        cells = "".join(f"{fmt.format(row[key]) if row[key] is not None else '-':>14s}" for key, _, fmt, _ in COLUMNS)
        print(f"{name:18s}{cells}{row['steps']:7d}{row['rows']:>6d} x{row['row_length']:>4d}")
    if ratios:
        cells = "".join(f"{ratios[key]['ratio']:.2f}x".rjust(14) if key in ratios else " " * 14
                        for key, _, _, _ in COLUMNS)
        print(f"{'lorakit/best peer':18s}{cells}")
        print("best peer per column: " + ", ".join(f"{header} {ratios[key]['peer']}"
                                                   for key, header, _, _ in COLUMNS if key in ratios))


def summarize_workdir(workdir: Path) -> None:
    """The tables from whatever per-side results a (possibly interrupted) run left in its workdir."""
    results: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(workdir.glob("*-[0-9]*.json")):
        if path.name.endswith(".spec.json") or path.name.startswith("profile-"):
            continue
        result = json.loads(path.read_text())
        results.setdefault(result["stage"], {}).setdefault(result["side"], []).append(result)
    for stage, sides in results.items():
        summary = {name: summarize(runs) for name, runs in sides.items()}
        check_equal_trained_tokens(stage, summary)
        print_table(stage, summary, ratios_to_best_peer(summary), "cpu")
        print("repeats: " + ", ".join(f"{name} {len(runs)}" for name, runs in sides.items()) + "; other programs "
              "kept busy (cores): " + ", ".join(f"{name} {row['other_load']:.2f}" for name, row in summary.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="hub id or folder (default: a ~50M Llama built locally)")
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8, help="examples (SFT) or pairs (DPO) per micro-batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pack-length", type=int, default=1024, help="row length of the packing sides")
    parser.add_argument("--packed-batch", type=int, help="rows per step of the packing sides (default: the rows "
                                                         "that hold --batch average examples)")
    parser.add_argument("--learning-rate", type=float, help="both stages (default: 1e-4 SFT, 5e-5 DPO)")
    parser.add_argument("--max-words", type=int, default=400, help="longest chat, in words")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--stage", choices=("sft", "dpo", "both"), default="both")
    parser.add_argument("--sides", help="comma-separated subset, e.g. lorakit,trl-bfd")
    parser.add_argument("--profile", action="store_true",
                        help="also write a torch.profiler operator table per side (slows every side, and its "
                             "event buffers inflate peak RSS by GBs: measure memory without it)")
    parser.add_argument("--workdir", help="keep the data, logs and per-side results here")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--summarize", metavar="WORKDIR",
                        help="print the tables from the per-side results already in WORKDIR (an interrupted run)")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    if args.summarize:
        summarize_workdir(Path(args.summarize))
        return
    report = run_bench(args)
    if args.json:
        print(json.dumps(report, indent=2))


def run_bench(args) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lorakit-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LORAKIT_CACHE", str(workdir / "cache"))
    model_dir = bench_model(args.model or str(build_local_model(workdir / "model", 32000)), workdir / "model-bench")
    chats, pairs = workdir / "chats.jsonl", workdir / "pairs.jsonl"
    write_chats(chats, args.rows, args.seed, args.max_words)
    write_pairs(pairs, args.rows, args.seed, int(args.max_words * 0.75))
    lf_python = llamafactory_python()
    wanted = set(args.sides.split(",")) if args.sides else None
    notes = []
    if lf_python is None and (wanted is None or "llamafactory" in wanted):
        notes.append(f"llamafactory side skipped: no LLaMA-Factory in {LLAMAFACTORY_VENV} "
                     "(bash bench/setup_llamafactory.sh installs it)")
    mean_tokens = mean_example_tokens(model_dir, chats)
    packed_batch = args.packed_batch or max(1, round(args.batch * mean_tokens / args.pack_length))
    stages = {"sft": SFT_SIDES, "dpo": DPO_SIDES}
    if args.stage != "both":
        stages = {args.stage: stages[args.stage]}
    report: dict = {"device": device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "model": args.model or "local ~50M Llama", "rows": args.rows, "batch": args.batch,
                    "packed_batch": packed_batch, "pack_length": args.pack_length, "epochs": args.epochs,
                    "mean_chat_tokens": mean_tokens, "gradient_checkpointing": args.gradient_checkpointing,
                    "loadavg_start": os.getloadavg(), "notes": notes, "workdir": str(workdir)}
    print(f"device {device}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, model "
          f"{report['model']}, {args.rows} rows, batch {args.batch} (packing sides: {packed_batch} x "
          f"{args.pack_length}), {args.epochs} epoch(s), gradient checkpointing {args.gradient_checkpointing}, "
          f"load average {report['loadavg_start'][0]:.2f}, workdir {workdir}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for stage, all_sides in stages.items():
        all_sides = all_sides + ("lorakit-sdpa",)
        sides = [s for s in all_sides if (s in wanted if wanted else s != "lorakit-sdpa")
                 and (s != "llamafactory" or lf_python)]
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for repeat in range(args.repeats):
            order = sides if repeat % 2 == 0 else list(reversed(sides))  # alternate who goes first
            for name in order:
                spec = {"side": name, "stage": stage, "repeat": repeat, "model": model_dir,
                        "data": str(chats if stage == "sft" else pairs), "batch": args.batch,
                        "packed_batch": packed_batch, "pack_length": args.pack_length, "epochs": args.epochs,
                        "learning_rate": args.learning_rate if args.learning_rate is not None
                        else LEARNING_RATE[stage], "seed": args.seed, "device": device,
                        "gradient_checkpointing": args.gradient_checkpointing,
                        "profile": str(workdir / f"profile-{stage}-{name}-{repeat}.txt") if args.profile else None}
                r = run_side(spec, workdir, lf_python)
                results[name].append(r)
                print(f"  {stage} repeat {repeat} {name:17s} {r['trained_tokens_per_s']:7.1f} trained tok/s "
                      f"{r['trained_tokens_per_cpu_s']:7.1f} /CPU-s {r['s_per_step']:6.2f} s/step  peak RSS "
                      f"{r['peak_rss_gb']:.2f} GB  trained {r['tokens']['trained']}  loss {r['first_loss']:.4f} -> "
                      f"{r['final_loss']:.4f}  others busy {r['other_load']:.2f} cores", file=sys.stderr)
        summary = {name: summarize(runs) for name, runs in results.items()}
        for name, row in summary.items():
            if args.gradient_checkpointing and row["gradient_checkpointing_layers"] == 0:
                raise SystemExit(f"{stage} {name}: gradient checkpointing was asked for but no layer checkpoints")
        check_equal_trained_tokens(stage, summary)
        ratios = ratios_to_best_peer(summary)
        report[stage] = summary
        report[f"{stage}_lorakit_over_best_peer"] = ratios
        report[f"{stage}_runs"] = results
    report["loadavg_end"] = os.getloadavg()
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    if not args.json:
        for stage in stages:
            print_table(stage, report[stage], report[f"{stage}_lorakit_over_best_peer"], device)
        others = [r["other_load"] for stage in stages for runs in report[f"{stage}_runs"].values() for r in runs]
        print(f"\nmachine: {os.cpu_count()} CPUs; other programs kept {statistics.mean(others):.2f} cores busy on "
              f"average while the sides trained (max {max(others):.2f}); load average "
              f"{report['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end")
        for note in notes:
            print(f"note: {note}")
    return report


if __name__ == "__main__":
    main()
