"""The Unsloth side of bench/gpu_check.py, run in Unsloth's own environment (its pinned transformers and TRL).

    PYTHONPATH=/tmp/unsloth-site python bench/unsloth_side.py SPEC.json        # on a CUDA GPU
    python bench/unsloth_side.py SPEC.json --stand-in                          # dry run: plain PEFT + TRL instead

No lorakit import. SPEC.json (written by bench/gpu_check.py) names the random-weight model folder, the data or
length, the LoRA settings and the mode:
  * train:   `steps` optimizer steps on the rows of `data` (every row `seq` tokens), timing the steps after the
             first and reading CUDA's peak counters (reset when training begins);
  * context: the longest sequence that trains one step, binary-searched (bench/context_search.py) with the CUDA
             allocator capped to a card of `card_gib`.
The model is loaded the way Unsloth's long-context benchmark does it: `FastLanguageModel.from_pretrained(...,
load_in_4bit=True, max_seq_length=...)`, `FastLanguageModel.get_peft_model(..., target_modules=all seven
projections, use_gradient_checkpointing="unsloth")` (its offloaded checkpointing), then TRL's SFTTrainer as
Unsloth patches it. `--stand-in` runs the same code path with PEFT and TRL's own classes, so the dry run can check
the plumbing on a CPU; its numbers are not Unsloth's and the result says so.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(spec: dict, stand_in: bool, max_seq: int):
    """(model with LoRA adapters, tokenizer, what ran)."""
    import torch

    cuda = torch.cuda.is_available()
    if not stand_in:
        import unsloth
        from unsloth import FastLanguageModel  # first: Unsloth patches transformers and TRL on import

        model, tokenizer = FastLanguageModel.from_pretrained(spec["model"], max_seq_length=max_seq,
                                                             load_in_4bit=spec["method"] == "qlora",
                                                             dtype=torch.bfloat16)
        model = FastLanguageModel.get_peft_model(model, r=spec["r"], lora_alpha=spec["alpha"],
                                                 lora_dropout=spec["dropout"], target_modules=TARGETS, bias="none",
                                                 use_gradient_checkpointing="unsloth", random_state=0)
        return model, tokenizer, f"unsloth {unsloth.__version__}"
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], quantization_config=quant if spec["method"] == "qlora"
                                                 else None, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": 0 if cuda else "cpu"})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    return model, AutoTokenizer.from_pretrained(spec["model"]), "stand-in: PEFT + TRL (Unsloth not run)"


def trainer_for(spec: dict, model, tokenizer, dataset, steps: int, callbacks=()):
    import torch
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    config = SFTConfig(output_dir=spec["out"], per_device_train_batch_size=spec.get("batch", 1), max_steps=steps,
                       learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                       max_length=None, bf16=cuda, use_cpu=not cuda, seed=0, optim="adamw_8bit" if cuda else
                       "adamw_torch", packing=False)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=list(callbacks))


def train(spec: dict, stand_in: bool) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback

    model, tokenizer, ran = load(spec, stand_in, spec["seq"])
    rows = load_dataset("json", data_files=spec["data"], split="train")
    texts = [tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False) for row in rows]
    from datasets import Dataset

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"][:spec["seq"]] for text in texts]
    dataset = Dataset.from_list([{"input_ids": row, "completion_mask": [1] * len(row)} for row in ids])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    trainer = trainer_for(spec, model, tokenizer, dataset, spec["steps"], [Clock()])
    trainer.train()
    steps = [end - start for start, end in zip(times[2::2], times[3::2])]
    tokens = spec.get("batch", 1) * spec["seq"]
    peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None
    reserved = torch.cuda.max_memory_reserved() / 1024**3 if torch.cuda.is_available() else None
    return {"ran": ran, "tokens_per_s": tokens * len(steps) / sum(steps) if steps else None,
            "measured_allocated_gib": peak, "measured_reserved_gib": reserved}


def context(spec: dict, stand_in: bool) -> dict:
    from datasets import Dataset

    from context_search import cap_memory, longest_trainable, one_document

    cap = cap_memory(spec.get("card_gib"))
    model, tokenizer, ran = load(spec, stand_in, spec["bound"])
    trainer = trainer_for(spec, model, tokenizer, Dataset.from_list([one_document(tokenizer, 128)]), 1)

    def try_length(n: int) -> bool:
        trainer.train_dataset = Dataset.from_list([one_document(tokenizer, n)])
        trainer.train()
        return True

    found = longest_trainable(try_length, spec["bound"], spec.get("guess"), spec["step"])
    return {"ran": ran, "cap": cap, **found}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stand_in = "--stand-in" in argv
    spec_path = Path([a for a in argv if not a.startswith("--")][0])
    spec = json.loads(spec_path.read_text())
    try:
        result = train(spec, stand_in) if spec["mode"] == "train" else context(spec, stand_in)
    except Exception as exc:  # the side's failure is a row of the table, not a crash of the check
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    Path(spec["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
