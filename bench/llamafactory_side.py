"""The LLaMA-Factory side of bench/throughput.py, run by LLaMA-Factory's own Python (see bench/setup_llamafactory.sh).

    /work/venvs/llamafactory/bin/python bench/llamafactory_side.py SPEC.json

SPEC.json is written by bench/throughput.py (model folder, chats or pairs in lorakit's JSONL, batch, epochs, learning
rate, seed, checkpointing). This script turns the rows into LLaMA-Factory's alpaca format with a dataset_info.json,
writes the YAML a user would write (`llamafactory.yaml` in the side's output folder; `llamafactory-cli train` on it
runs the same training) and runs it through `llamafactory.train.tuner.run_exp`, the function `llamafactory-cli train`
calls, with bench/measure.py's recorder attached (a callback for the training window, a wrapper around
`Trainer.training_step` for the token counts).

Settings, chosen to match the other sides and to be LLaMA-Factory's best on this machine:
  * SFT: `packing: true, neat_packing: true` (examples packed into rows of `cutoff_len` with a block-diagonal
    attention mask, so packed examples cannot see each other), `cutoff_len` = the bench's --pack-length;
  * DPO: `stage: dpo`, sigmoid loss, beta 0.1 (TRL's default too); LLaMA-Factory packs nothing for DPO;
  * template `chatml_bench`: LLaMA-Factory's `chatml` with nothing after the reply's <|im_end|>, the layout of
    bench/throughput.py's BENCH_CHATML that the other sides render with, so every side trains the same tokens
    (the bench's chats are single-turn: this template would drop the newline between turns of longer chats);
  * gradient checkpointing as the other sides: on unless --no-gradient-checkpointing, and non-reentrant
    (`use_reentrant_gc: false`; LLaMA-Factory's default is reentrant);
  * attention `sdpa` (what the others use), fp32 on CPU, adamw_torch, linear schedule without warm-up.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

LORA = dict(lora_rank=16, lora_alpha=32, lora_dropout=0.0, lora_target="all")


def write_dataset(spec: dict, folder: Path) -> str:
    """lorakit's prompt/completion or preference JSONL -> LLaMA-Factory alpaca JSON + dataset_info.json."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    name = f"bench_{spec['stage']}"
    if spec["stage"] == "sft":
        records = [{"instruction": r["prompt"][0]["content"], "input": "", "output": r["completion"][0]["content"]}
                   for r in rows]
        info = {name: {"file_name": f"{name}.json"}}
    else:
        records = [{"instruction": r["prompt"][0]["content"], "input": "", "chosen": r["chosen"][0]["content"],
                    "rejected": r["rejected"][0]["content"]} for r in rows]
        info = {name: {"file_name": f"{name}.json", "ranking": True,
                       "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                   "rejected": "rejected"}}}
    (folder / f"{name}.json").write_text(json.dumps(records))
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return name


def register_bench_template() -> None:
    from llamafactory.data.formatter import StringFormatter
    from llamafactory.data.template import register_template

    register_template(
        name="chatml_bench",
        format_user=StringFormatter(slots=["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"]),
        format_assistant=StringFormatter(slots=["{{content}}<|im_end|>"]),
        format_system=StringFormatter(slots=["<|im_start|>system\n{{content}}<|im_end|>\n"]),
        stop_words=["<|im_end|>"],
        replace_eos=True,
    )


def llamafactory_args(spec: dict, dataset: str, dataset_dir: Path) -> dict:
    sft = spec["stage"] == "sft"
    args = {
        "model_name_or_path": spec["model"],
        "stage": spec["stage"],
        "do_train": True,
        "finetuning_type": "lora",
        **LORA,
        "dataset": dataset,
        "dataset_dir": str(dataset_dir),
        "template": "chatml_bench",
        "cutoff_len": spec["pack_length"] if sft else 1024,
        "overwrite_cache": True,
        "output_dir": spec["out"],
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "plot_loss": False,
        "report_to": "none",
        "disable_tqdm": True,
        "per_device_train_batch_size": spec["packed_batch"] if sft else spec["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": spec["learning_rate"],
        "num_train_epochs": float(spec["epochs"]),
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "optim": "adamw_torch",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": spec["seed"],
        "data_seed": spec["seed"],
        "bf16": spec["device"] == "cuda",
        "fp16": False,
        "use_cpu": spec["device"] == "cpu",
        "flash_attn": "sdpa",
        "disable_gradient_checkpointing": not spec["gradient_checkpointing"],
        "use_reentrant_gc": False,
        "dataloader_num_workers": 0,
    }
    if sft:
        args.update(packing=True, neat_packing=True)
    else:
        args.update(pref_beta=0.1, pref_loss="sigmoid", pref_ftx=0.0)
    return args


def main(spec_path: str) -> None:
    import llamafactory
    import torch
    import transformers
    import yaml
    from llamafactory.train.tuner import run_exp

    from measure import Recorder, write_result

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir = out / "data"
    dataset = write_dataset(spec, dataset_dir)
    register_bench_template()
    args = llamafactory_args(spec, dataset, dataset_dir)
    (out / "llamafactory.yaml").write_text(yaml.safe_dump(args, sort_keys=False))
    recorder = Recorder(profile=spec.get("profile"))
    recorder.patch_trainer_class()
    rows = {}

    from transformers import TrainerCallback

    class Rows(TrainerCallback):  # the packed rows LLaMA-Factory made, for the table
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            if train_dataloader is not None:
                rows["rows"] = len(train_dataloader.dataset)

    run_exp(args, callbacks=[recorder.callback(), Rows()])
    write_result(spec["result"], recorder.result(
        "llamafactory", spec["stage"], rows=rows.get("rows"),
        batching="neat_packing rows of cutoff_len, block-diagonal mask" if spec["stage"] == "sft"
        else "rows padded to the longest",
        versions={"llamafactory": llamafactory.__version__, "torch": torch.__version__,
                  "transformers": transformers.__version__}))


if __name__ == "__main__":
    main(sys.argv[1])
