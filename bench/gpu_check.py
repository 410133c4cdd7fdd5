"""lorakit itself on a GPU: measured peak memory vs `vram-estimate`, tokens/s vs plain TRL, and which fast paths ran.

    python bench/gpu_check.py                     # CUDA: the default grid, stopping before --budget-s is spent
    python bench/gpu_check.py --dry-run           # CPU: tiny shapes through the same code path; prints the columns
    python bench/gpu_check.py --models llama-3.2-1b --json out/gpu_check.json

For each row it builds a random-weight model of a real architecture locally (the model's config.json values, random
init, saved once; nothing is downloaded), writes chats long enough to fill the row's sequence length (truncated to
it, so every micro-batch is exactly batch x seq tokens), and trains a few real steps through lorakit's public API
(`lorakit.config.load_recipe` + `lorakit.train.sft.run_sft` / `lorakit.train.dpo.run_dpo`). A TrainerCallback
resets CUDA's peak counters once training begins (after the weights are loaded), so the measured peaks are the
training steps' own, like the estimate's; it also times the steps after the first. The estimate comes from the same
`lorakit.vram` code the preflight uses, for the recipe lorakit resolved. For the rows marked "vs TRL", the same
settings (model, LoRA, 4-bit base, precision, batch, length, checkpointing, steps) train with plain TRL
(`SFTTrainer`/`DPOTrainer` defaults otherwise) for the tokens/s ratio.

Columns: row, estimated and measured max_memory_allocated (GiB) and the error, the same for max_memory_reserved,
lorakit tokens/s, TRL tokens/s, then what actually ran: bf16 (the trainer's flag), the optimizer class (paged 8-bit
AdamW for QLoRA), the attention implementation the model ran with (sdpa, flash_attention_2, or lorakit's per-example
SDPA lorakit_sdpa_varlen), the LM head (TRL's tiled fused head, lorakit's plain head, or the model's own), and
whether Liger's kernels and torch.compile ran (the run's manifest). The rows with `liger`/`compile` in their label
compare those options with plain TRL given the same option (`use_liger_kernel`, `torch_compile`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1024**3

# The values of each model's published config.json that fix its memory (random weights otherwise).
SHAPES = {
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       max_position_embeddings=131072, rope_theta=1000000.0),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                         max_position_embeddings=131072, rope_theta=500000.0),
    # --dry-run: the same code path on shapes a CPU trains in seconds
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False,
                       max_position_embeddings=2048),
}


@dataclass
class Case:
    model: str
    stage: str  # sft | dpo
    method: str  # lora | qlora
    seq: int
    batch: int
    checkpointing: bool = True
    loss: str = "fused"  # fused | plain
    vs_trl: bool = False
    offload: bool = False  # train.activation_offloading (TRL's activation offloading)
    liger: bool | None = None  # train.liger (None: auto, on when liger-kernel is installed); TRL: use_liger_kernel
    compile: bool = False  # train.compile; TRL: torch_compile
    attention: str = "auto"  # model.attn_implementation (auto: flash-attn when installed, else lorakit's choice)
    dropout: float = 0.05  # lora.dropout (Unsloth's published long-context runs: 0)
    tiled: bool | None = None  # train.tiled_mlp (None: auto)
    vs_unsloth: bool = False  # the same row through Unsloth, in its own environment (bench/unsloth_side.py)

    @property
    def label(self) -> str:
        return (f"{self.model} {self.stage} {self.method} {self.seq}x{self.batch} gc {'on' if self.checkpointing else 'off'}"
                f" {self.loss}" + (" offload" if self.offload else "")
                + ("" if self.liger is None else f" liger {'on' if self.liger else 'off'}")
                + (" compile" if self.compile else "") + ("" if self.attention == "auto" else f" {self.attention}")
                + ("" if self.dropout == 0.05 else f" dropout {self.dropout:g}")
                + ("" if self.tiled is None else f" tiles {'on' if self.tiled else 'off'}"))


# In the order they run; the budget cuts the tail. ~6 min on one H200 (most of it loading the 7-8B models).
GRID = [
    Case("llama-3.2-1b", "sft", "lora", 1024, 1, vs_trl=True),
    Case("llama-3.2-1b", "sft", "qlora", 1024, 1, vs_trl=True),
    Case("llama-3.2-1b", "sft", "lora", 1024, 4, checkpointing=False),
    Case("llama-3.2-1b", "sft", "qlora", 4096, 4),
    Case("llama-3.2-1b", "sft", "qlora", 4096, 1, loss="plain"),
    Case("llama-3.2-1b", "sft", "qlora", 1024, 4, checkpointing=False, loss="plain"),
    Case("llama-3.2-1b", "dpo", "qlora", 1024, 1, vs_trl=True),
    Case("llama-3.2-1b", "dpo", "lora", 1024, 4),
    Case("llama-3.1-8b", "sft", "qlora", 1024, 1, vs_trl=True),
    Case("llama-3.1-8b", "sft", "qlora", 4096, 4),
    Case("llama-3.1-8b", "sft", "lora", 4096, 1),
    Case("llama-3.1-8b", "sft", "lora", 4096, 1, offload=True),
    Case("llama-3.1-8b", "dpo", "qlora", 1024, 1),
    Case("qwen2.5-7b", "sft", "qlora", 4096, 1),
    Case("qwen2.5-7b", "sft", "qlora", 1024, 4, checkpointing=False),
    # the GPU path of issue 20, each against plain TRL with the same setting: Liger's RMSNorm/SwiGLU/RoPE kernels
    # (TRL: use_liger_kernel), torch.compile (TRL: torch_compile), and the attention packed rows run with
    # (flash-attn when installed; otherwise lorakit's per-example SDPA against transformers' block-diagonal mask)
    Case("llama-3.2-1b", "sft", "lora", 1024, 4, liger=False, vs_trl=True),
    Case("llama-3.2-1b", "sft", "lora", 1024, 4, liger=True, vs_trl=True),
    Case("llama-3.2-1b", "sft", "lora", 1024, 4, liger=False, compile=True, vs_trl=True),
    Case("llama-3.2-1b", "sft", "lora", 1024, 4, liger=False, attention="sdpa"),
    Case("llama-3.2-1b", "dpo", "lora", 1024, 2, liger=True, vs_trl=True),
    # long context (issue 26): Llama-3.1-8B QLoRA, one sequence per step, Unsloth's published settings (r=32 in
    # Unsloth's runs; here the grid's r=16 on every side, dropout 0), lorakit's long-context options where it needs
    # them; each against plain TRL and Unsloth
    Case("llama-3.1-8b", "sft", "qlora", 8192, 1, dropout=0.0, vs_trl=True, vs_unsloth=True),
    Case("llama-3.1-8b", "sft", "qlora", 32768, 1, dropout=0.0, offload=True, vs_trl=True, vs_unsloth=True),
    Case("llama-3.1-8b", "sft", "qlora", 65536, 1, dropout=0.0, offload=True, vs_unsloth=True),
]
# The max-context search (--max-context-gib): per side, the longest sequence that trains one step on Llama-3.1-8B
# QLoRA with the allocator capped to a card of that size (bench/context_search.py).
CONTEXT_SIDES = ("lorakit", "lorakit-offload", "trl", "unsloth")
CONTEXT_MODEL = "llama-3.1-8b"
CONTEXT_BOUND = 262_144
DRY_GRID = [
    Case("tiny-llama", "sft", "lora", 128, 1, vs_trl=True),
    Case("tiny-llama", "sft", "qlora", 128, 2, checkpointing=False, loss="plain"),
    Case("tiny-llama", "dpo", "qlora", 128, 1),
    Case("tiny-llama", "sft", "lora", 128, 2, liger=True, vs_trl=True),  # on the CPU: liger reported off
    Case("tiny-llama", "sft", "qlora", 256, 1, dropout=0.0, tiled=True, vs_trl=True, vs_unsloth=True),
]
DRY_CONTEXT_MODEL, DRY_CONTEXT_BOUND = "tiny-llama", 256
DRY_CONTEXT_SIDES = ("lorakit", "trl", "unsloth")  # lorakit-offload is lorakit on a CPU
COLUMNS = ("row", "est alloc", "meas alloc", "err", "est reserved", "meas reserved", "err ", "lorakit tok/s",
           "TRL tok/s", "Unsloth tok/s", "TRL alloc", "Unsloth alloc", "bf16", "optimizer", "attention", "LM head",
           "liger", "compile", "tiles")


@dataclass
class Result:
    case: Case
    estimate_allocated_gib: float | None = None
    estimate_reserved_gib: float | None = None
    measured_allocated_gib: float | None = None
    measured_reserved_gib: float | None = None
    tokens_per_s: float | None = None
    trl_tokens_per_s: float | None = None
    bf16: bool | None = None
    optimizer: str = ""
    attention: str = ""
    head: str = ""
    liger: bool | None = None  # what the run's manifest says ran
    compile: bool | None = None
    tiled_mlp: bool | None = None
    seconds: float = 0.0
    error: str = ""
    trl: dict = field(default_factory=dict)
    unsloth: dict = field(default_factory=dict)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(name: str, folder: Path) -> Path:
    """A random-weight model with this architecture's shape, saved like a downloaded one (weights + tokenizer)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorakit.chat_template import CHATML
    from lorakit.tiny import TinySpec, build_tokenizer

    tokenizer = build_tokenizer(TinySpec())  # a 1k-token BPE: ids fit every vocabulary, the embeddings stay real size
    tokenizer.chat_template = CHATML
    values = dict(SHAPES[name])
    config = AutoConfig.for_model(values.pop("model_type"), **values, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    free_memory()
    return folder


def _words(rng: random.Random, count: int, vocabulary: list[str]) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def write_data(path: Path, stage: str, rows: int, seq: int, seed: int = 0) -> Path:
    """Chats whose answers are longer than `seq` tokens (the 1k-token BPE gives ~1.5 tokens per word), so lorakit's
    truncation to max_length makes every row exactly `seq` tokens."""
    from lorakit.tiny import corpus_lines

    vocabulary = " ".join(corpus_lines()).split()
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(rows):
            prompt = [{"role": "user", "content": _words(rng, 12, vocabulary)}]
            answer = lambda: [{"role": "assistant", "content": _words(rng, seq, vocabulary)}]  # noqa: E731
            row = ({"prompt": prompt, "completion": answer()} if stage == "sft" else
                   {"prompt": prompt, "chosen": answer(), "rejected": answer()})
            handle.write(json.dumps(row) + "\n")
    return path


def recipe_for(case: Case, model_dir: Path, data: Path, out: Path, steps: int):
    from lorakit.config import load_recipe

    overrides = [
        f"method={case.method}", "lora.r=16", "lora.alpha=32", f"lora.dropout={case.dropout}",
        "train.gradient_accumulation_steps=1", f"train.micro_batch_size={case.batch}",
        f"train.gradient_checkpointing={str(case.checkpointing).lower()}", f"train.loss={case.loss}",
        "train.warmup_ratio=0.0", "train.lr_scheduler_type=constant", "train.logging_steps=1",
        "train.save_steps=100000", f"data.max_length={case.seq}", "preflight=false",
    ]
    if case.stage == "dpo":
        overrides += ["dpo.max_prompt_length=64", "dpo.precompute_ref_log_probs=false"]
    if case.offload:
        overrides.append("train.activation_offloading=true")  # an error row until the recipe schema has it
    if case.liger is not None:
        overrides.append(f"train.liger={str(case.liger).lower()}")
    if case.compile:
        overrides.append("train.compile=true")
    if case.attention != "auto":
        overrides.append(f"model.attn_implementation={case.attention}")
    if case.tiled is not None:
        overrides.append(f"train.tiled_mlp={str(case.tiled).lower()}")
    return load_recipe(case.stage, None, overrides, {"model": str(model_dir), "data": str(data),
                                                     "output_dir": str(out), "max_steps": steps, "seed": 0})


def estimate_for(recipe, model_dir: Path):
    """What `lorakit vram-estimate --recipe` and the preflight say for this run (the same code)."""
    from lorakit.vram.estimate import estimate
    from lorakit.vram.resolve import resolve_shape, setup_from_recipe

    _, setup = setup_from_recipe(recipe)
    return estimate(resolve_shape(str(model_dir)), setup)


def probe_callback(tokens_per_step: int):
    """A TrainerCallback that resets CUDA's peak counters when training starts, times steps after the first, and
    records which precision, optimizer, attention and head the trainer actually uses."""
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.seen: dict = {}

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.seen["bf16"] = bool(args.bf16)
            self.seen["model"] = model

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            if optimizer is not None:
                inner = getattr(optimizer, "optimizer", optimizer)
                self.seen["optimizer"] = type(inner).__name__

        def tokens_per_s(self) -> float | None:
            steps = [end - start for start, end in zip(self.times[2::2], self.times[3::2])]  # after the first
            return tokens_per_step * len(steps) / sum(steps) if steps else None

    return Probe()


def head_kind(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = getattr(base, "forward", None)
    code = getattr(forward, "__code__", None)
    qualname = getattr(forward, "__qualname__", "")
    if code is not None and code.co_name == "_fused_forward":
        return "fused (TRL tiles)"
    if "use_plain_lm_head" in qualname:
        return "plain (lorakit)"
    return "model's own"


def attention_of(model) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", "?"))


def measured(probe) -> tuple[float | None, float | None]:
    import torch

    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_lorakit(case: Case, model_dir: Path, work: Path, steps: int) -> Result:
    from lorakit.train.dpo import run_dpo
    from lorakit.train.sft import run_sft

    result = Result(case)
    data = write_data(work / f"{case.stage}-{case.seq}.jsonl", case.stage, case.batch * (steps + 1), case.seq)
    out = work / "runs" / case.label.replace(" ", "_")
    recipe = recipe_for(case, model_dir, data, out, steps)
    est = estimate_for(recipe, model_dir)
    result.estimate_allocated_gib, result.estimate_reserved_gib = est.allocated / GIB, est.reserved / GIB
    sequences = case.batch * (2 if case.stage == "dpo" else 1)
    probe = probe_callback(sequences * case.seq)
    free_memory()
    start = time.perf_counter()
    run = (run_sft if case.stage == "sft" else run_dpo)(recipe, force=True, callbacks=[probe])
    result.seconds = time.perf_counter() - start
    manifest = json.loads((Path(run.path) / "manifest.json").read_text())
    speed, long_sequences = manifest.get("speed") or {}, manifest.get("long_sequences") or {}
    result.liger, result.compile = speed.get("liger"), speed.get("compile")
    result.tiled_mlp = long_sequences.get("tiled_mlp")
    result.measured_allocated_gib, result.measured_reserved_gib = measured(probe)
    result.tokens_per_s = probe.tokens_per_s()
    model = probe.seen.pop("model", None)
    result.bf16 = probe.seen.get("bf16")
    result.optimizer = probe.seen.get("optimizer", "")
    if model is not None:
        result.attention, result.head = attention_of(model), head_kind(model)
    del model, probe
    free_memory()
    return result


def run_plain_trl(case: Case, model_dir: Path, work: Path, steps: int) -> dict:
    """The same settings through plain TRL: its trainer defaults, lorakit's LoRA, 4-bit base, batch, length,
    precision, checkpointing and steps."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = device() == "cuda"
    data = work / f"{case.stage}-{case.seq}.jsonl"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16) if case.method == "qlora" else None
    from lorakit.model import resolve_attn

    attention = resolve_attn(case.attention, device())  # flash-attn when installed, like lorakit; else sdpa
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 quantization_config=quant, attn_implementation=attention,
                                                 device_map={"": 0 if cuda else "cpu"})
    common = dict(output_dir=str(work / "trl"), per_device_train_batch_size=case.batch, max_steps=steps,
                  learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                  max_length=case.seq, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=case.checkpointing,
                  seed=0, use_liger_kernel=bool(case.liger) and cuda, torch_compile=case.compile)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=case.dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    probe = probe_callback(case.batch * (2 if case.stage == "dpo" else 1) * case.seq)
    dataset = load_dataset("json", data_files=str(data), split="train")
    if case.stage == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora, callbacks=[probe])
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora, callbacks=[probe])
    free_memory()
    trainer.train()
    allocated, reserved = measured(probe)
    seen = {"tokens_per_s": probe.tokens_per_s(), "measured_allocated_gib": allocated,
            "measured_reserved_gib": reserved, "optimizer": probe.seen.get("optimizer", ""),
            "head": head_kind(trainer.model), "attention": attention_of(trainer.model)}
    del trainer, model, probe
    free_memory()
    return seen


UNSLOTH_ENV = "LORAKIT_UNSLOTH_SITE"  # a folder Unsloth's wheels were installed into (its transformers, TRL, ...)


def unsloth_process(spec: dict, work: Path, dry_run: bool) -> dict:
    """bench/unsloth_side.py on `spec`, in Unsloth's environment (its site folder first on PYTHONPATH); in a dry run,
    the same script with --stand-in (plain PEFT + TRL) in this environment."""
    import subprocess

    name = f"unsloth-{spec['mode']}-{spec.get('seq', spec.get('bound'))}"
    spec = {**spec, "out": str(work / name), "result": str(work / f"{name}.json")}
    path = work / f"{name}.spec.json"
    path.write_text(json.dumps(spec))
    env = dict(os.environ)
    command = [sys.executable, str(REPO / "bench" / "unsloth_side.py"), str(path)]
    if dry_run:
        command.append("--stand-in")
    else:
        site = os.environ.get(UNSLOTH_ENV)
        if not site:
            return {"error": f"no Unsloth environment ({UNSLOTH_ENV} unset; see docs/long-context.md)"}
        env["PYTHONPATH"] = site  # Unsloth's own transformers/TRL, never lorakit's
    log = work / f"{name}.log"
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    if code != 0 or not Path(spec["result"]).exists():
        return {"error": f"exit {code}: {log.read_text()[-300:]}"}
    return json.loads(Path(spec["result"]).read_text())


def run_unsloth(case: Case, model_dir: Path, work: Path, steps: int, dry_run: bool) -> dict:
    data = work / f"{case.stage}-{case.seq}.jsonl"
    return unsloth_process({"mode": "train", "model": str(model_dir), "data": str(data), "seq": case.seq,
                            "batch": case.batch, "steps": steps, "method": case.method, "r": 16, "alpha": 32,
                            "dropout": case.dropout}, work, dry_run)


def context_side(spec_path: Path) -> int:
    """One side of the max-context search, in its own process (the allocator cap is per process): lorakit with its
    defaults or with activation offloading, or plain TRL. Writes the search's result to spec['result']."""
    spec = json.loads(spec_path.read_text())
    from datasets import Dataset

    sys.path.insert(0, str(REPO / "bench"))
    from context_search import cap_memory, longest_trainable, one_document

    cap = cap_memory(spec.get("card_gib"))
    if spec.get("card_gib"):
        os.environ["LORAKIT_GPU_MEMORY_GIB"] = str(spec["card_gib"])  # lorakit plans its auto choices for the card
    model_dir, work = Path(spec["model"]), Path(spec["work"])
    try:
        if spec["side"].startswith("lorakit"):
            from lorakit.outputs import RunFolder
            from lorakit.train.sft import build_sft_trainer

            case = Case(spec["model_name"], "sft", "qlora", spec["bound"], 1, dropout=0.0,
                        offload=spec["side"] == "lorakit-offload")
            data = write_data(work / "context-seed.jsonl", "sft", 1, 128)
            out = work / "runs" / f"context-{spec['side']}"
            setup = build_sft_trainer(recipe_for(case, model_dir, data, out, 1), RunFolder.open(out, force=True))
            trainer, tokenizer = setup.trainer, setup.tokenizer
            ran = {"tiled_mlp": setup.speed.tiled_mlp, "why": setup.speed.reasons.get("tiled_mlp")}
        else:
            trainer, tokenizer = plain_trl_trainer(model_dir, work), None
            tokenizer = trainer.processing_class
            ran = {}

        def try_length(n: int) -> bool:
            trainer.train_dataset = Dataset.from_list([one_document(tokenizer, n)])
            trainer.args.max_steps = 1
            trainer.train()
            return True

        found = longest_trainable(try_length, spec["bound"], spec.get("guess"), spec["step"])
        result = {"cap": cap, **ran, **found}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


def plain_trl_trainer(model_dir: Path, work: Path):
    """Plain TRL on Llama QLoRA for the search: 4-bit NF4 base, LoRA r=16 dropout 0 on all linear layers,
    checkpointing on, its defaults otherwise (its fused LM head)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = device() == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    from lorakit.model import resolve_attn

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 quantization_config=quant, device_map={"": 0 if cuda else "cpu"},
                                                 attn_implementation=resolve_attn("auto", device()))
    config = SFTConfig(output_dir=str(work / "trl-context"), per_device_train_batch_size=1, max_steps=1,
                       learning_rate=1e-4, save_strategy="no", report_to="none", disable_tqdm=True, max_length=None,
                       bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True, seed=0)
    sys.path.insert(0, str(REPO / "bench"))
    from context_search import one_document

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list([one_document(tokenizer, 128)]),
                      processing_class=tokenizer, peft_config=lora)


def planner_guess(card_gib: float | None, offload: bool) -> int | None:
    """Where lorakit's planner puts the longest sequence on that card (the search starts there)."""
    if not card_gib:
        return None
    from lorakit.vram.catalog import GPU, find_model
    from lorakit.vram.estimate import lorakit_defaults
    from lorakit.vram.plan import max_seq_len

    setup = lorakit_defaults(method="qlora", lora_dropout=0.0, activation_offloading=offload)
    return max_seq_len(find_model("Llama-3.1-8B"), setup, GPU("card", "card", card_gib, 1.0)) or None


def run_context_search(work: Path, card_gib: float | None, dry_run: bool, sides=CONTEXT_SIDES) -> list[dict]:
    import subprocess

    name = DRY_CONTEXT_MODEL if dry_run else CONTEXT_MODEL
    bound = DRY_CONTEXT_BOUND if dry_run else CONTEXT_BOUND
    step = 128 if dry_run else 1024
    model_dir = build_model(name, work / "models" / name)
    found = []
    for side in sides:
        guess = None if dry_run else planner_guess(card_gib, side == "lorakit-offload")
        spec = {"side": side, "model": str(model_dir), "model_name": name, "work": str(work), "bound": bound,
                "step": step, "card_gib": card_gib, "guess": guess, "result": str(work / f"context-{side}.json")}
        print(f"  max context: {side} (guess {guess})", flush=True)
        if side == "unsloth":
            result = unsloth_process({**spec, "mode": "context", "method": "qlora", "r": 16, "alpha": 32,
                                      "dropout": 0.0}, work, dry_run)
        else:
            path = work / f"context-{side}.spec.json"
            path.write_text(json.dumps(spec))
            with open(work / f"context-{side}.log", "w") as handle:
                subprocess.call([sys.executable, str(Path(__file__).resolve()), "--context-side", str(path)],
                                stdout=handle, stderr=subprocess.STDOUT, cwd=str(REPO))
            result = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).exists() else {
                "error": (work / f"context-{side}.log").read_text()[-300:]}
        found.append({"side": side, "guess": guess, **result})
        print(f"    -> {result.get('max_context', result.get('error'))}", flush=True)
    return found


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _err(estimate, measured_value) -> str:
    if estimate is None or measured_value is None:
        return "-"
    return f"{100 * (estimate / measured_value - 1):+.1f}%"


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.error:
            rows.append([r.case.label, "error: " + r.error[:60]] + [""] * (len(COLUMNS) - 2))
            continue
        rows.append([r.case.label, _fmt(r.estimate_allocated_gib), _fmt(r.measured_allocated_gib),
                     _err(r.estimate_allocated_gib, r.measured_allocated_gib), _fmt(r.estimate_reserved_gib),
                     _fmt(r.measured_reserved_gib), _err(r.estimate_reserved_gib, r.measured_reserved_gib),
                     _fmt(r.tokens_per_s, 0), _fmt(r.trl_tokens_per_s, 0), _fmt(r.unsloth.get("tokens_per_s"), 0),
                     _fmt(r.trl.get("measured_allocated_gib")), _fmt(r.unsloth.get("measured_allocated_gib")),
                     str(r.bf16), r.optimizer, r.attention, r.head, str(r.liger), str(r.compile), str(r.tiled_mlp)])
    return rows


def print_table(results: list[Result], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("row", "optimizer", "attention", "LM head") else "right")
    for row in table_rows(results):
        table.add_row(*row)
    Console(width=320).print(table)  # 19 columns: narrower and rich wraps their headers


def environment() -> dict:
    import torch

    from lorakit.vram.estimate import installed_versions

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "stack": installed_versions()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / GIB, 1))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU through the same code path")
    parser.add_argument("--models", default="", help="comma-separated subset of " + ", ".join(SHAPES))
    parser.add_argument("--rows", default="", help="only rows whose label contains this text (e.g. liger, compile)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per row (the first is not timed)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    parser.add_argument("--no-trl", action="store_true", help="skip the plain-TRL side")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="where models and runs go (default: a temporary folder)")
    parser.add_argument("--no-unsloth", action="store_true", help="skip the Unsloth side")
    parser.add_argument("--max-context-gib", type=float, default=24.0,
                        help="card size for the max-context search (0: skip it); a dry run searches uncapped up to "
                             f"{DRY_CONTEXT_BOUND} tokens")
    parser.add_argument("--context-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.context_side:
        return context_side(args.context_side)

    started = time.perf_counter()
    if not args.dry_run and device() != "cuda":
        print("no CUDA GPU: run with --dry-run for the CPU check of the code path", file=sys.stderr)
        return 2
    grid = DRY_GRID if args.dry_run else GRID
    if args.models:
        wanted = {m.strip() for m in args.models.split(",")}
        grid = [c for c in grid if c.model in wanted]
    if args.rows:
        grid = [c for c in grid if args.rows in c.label]
    steps = 2 if args.dry_run else args.steps
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lorakit-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(json.dumps(env), flush=True)
    results, skipped = [], []
    for case in grid:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(case.label)
            continue
        print(f"[{time.perf_counter() - started:6.0f}s] {case.label}", flush=True)
        try:
            model_dir = build_model(case.model, work / "models" / case.model)
            result = run_lorakit(case, model_dir, work, steps)
            if case.vs_trl and not args.no_trl:
                result.trl = run_plain_trl(case, model_dir, work, steps)
                result.trl_tokens_per_s = result.trl["tokens_per_s"]
            if case.vs_unsloth and not args.no_unsloth:
                result.unsloth = run_unsloth(case, model_dir, work, steps, args.dry_run)
        except Exception as exc:  # one failing row must not lose the others' numbers
            result = Result(case, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            free_memory()
        results.append(result)
        print("   " + " | ".join(table_rows([result])[0][1:]), flush=True)
    print_table(results, f"lorakit on {env.get('gpu', 'the CPU (dry run: no CUDA counters)')} "
                         f"({env['stack']})")
    if skipped:
        print(f"skipped for the time budget: {'; '.join(skipped)}")
    for r in results:
        if r.unsloth.get("error") or r.unsloth.get("ran", "").startswith("stand-in"):
            print(f"unsloth side of {r.case.label}: {r.unsloth.get('error') or r.unsloth['ran']}")
    contexts = []
    if args.max_context_gib and (args.dry_run or time.perf_counter() - started < args.budget_s) \
            and (not args.models or (DRY_CONTEXT_MODEL if args.dry_run else CONTEXT_MODEL) in args.models):
        card = None if args.dry_run else args.max_context_gib
        sides = [s for s in (DRY_CONTEXT_SIDES if args.dry_run else CONTEXT_SIDES) if not (s == "unsloth" and args.no_unsloth)
                 and not (s == "trl" and args.no_trl)]
        contexts = run_context_search(work, card, args.dry_run, sides)
        cap = f"dry run: uncapped, bound {DRY_CONTEXT_BOUND}" if card is None else f"allocator capped for a {card:g} GiB card"
        print(f"Longest sequence that trains one step ({cap}; "
              f"{CONTEXT_MODEL if not args.dry_run else DRY_CONTEXT_MODEL} QLoRA r=16, dropout 0, batch 1):")
        for row in contexts:
            print(f"  {row['side']:16s} {row.get('max_context', 'error: ' + str(row.get('error'))[:120])}"
                  + (f"  (planner: {row['guess']:,})" if row.get("guess") else "")
                  + (f"  [{row['ran']}]" if row.get("ran") else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "results": [{**asdict(r), "case": asdict(r.case)} for r in results],
                   "max_context": contexts,
                   "skipped": skipped, "seconds": round(time.perf_counter() - started, 1)}
        args.json.write_text(json.dumps(payload, indent=1))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
