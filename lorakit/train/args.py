"""A recipe's `train` section as the Trainer's arguments (the fields SFTConfig, DPOConfig and later trainers share)."""

from __future__ import annotations

from typing import Any

from lorakit.config import TrainSection
from lorakit.console import info, warn
from lorakit.errors import ConfigError
from lorakit.outputs import RunFolder
from lorakit.train.distributed import world
from lorakit.train.keep import keep_arguments
from lorakit.train.strategies import BNB_OPTIMIZERS, launched_plan


def resolve_optim(optim: str, method: str, device: str, strategy: str = "ddp") -> str:
    """auto -> paged 8-bit AdamW for QLoRA on CUDA (what QLoRA was designed with), plain AdamW otherwise and under
    FSDP/ZeRO, which shard a torch optimizer's states but not bitsandbytes' (explicit choices there are refused by
    lorakit.train.strategies.check_plan)."""
    if optim == "auto":
        sharded = strategy in ("fsdp", "zero2", "zero3")
        return "paged_adamw_8bit" if method == "qlora" and device == "cuda" and not sharded else "adamw_torch"
    if optim in BNB_OPTIMIZERS and device != "cuda":
        warn(f"train.optim {optim} needs a CUDA GPU; using adamw_torch on the {device}")
        return "adamw_torch"
    return optim


def check_report_to(report_to) -> None:
    """Every logger in train.report_to is installed (checked once, before anything loads), as transformers sees it."""
    from transformers.integrations import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    for target in report_to:
        if target not in available:
            raise ConfigError(f"train.report_to lists {target}, which is not installed",
                              hint=f"pip install {target}, or remove it from train.report_to")


def training_kwargs(train: TrainSection, run: RunFolder, device: str, precision: str, method: str,
                    has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig and DPOConfig. Under several processes each takes
    micro_batch_size rows per step: the trainer's accelerator shards the data and averages the gradients."""
    strategy = launched_plan(world().size).strategy if world().distributed else "ddp"
    if train.activation_offloading and device != "cuda":
        # TRL's offloading needs an accelerator stream (it fails at start on a CPU-only torch); on the CPU the
        # activations are already in host memory, so there is nothing to move.
        info(f"train.activation_offloading: nothing to offload on the {device} (activations already live in host RAM)")
    kwargs = dict(
        activation_offloading=train.activation_offloading and device == "cuda",
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=train.micro_batch_size,
        per_device_eval_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=resolve_optim(train.optim, method, device, strategy),
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        gradient_checkpointing=None,  # TRL defaults this deprecated alias to True; the v5 name below decides
        activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=train.eval_steps or train.save_steps,
        report_to=list(train.report_to) or "none",
        run_name=run.path.name,  # the name wandb / trackio show
        project="lorakit",  # trackio's project (its local database is TRACKIO_DIR/lorakit.db)
        disable_tqdm=True,
        dataloader_num_workers=0,
        # every LoRA weight takes part in every step (the frozen DPO reference is not trained): no search for unused
        # parameters under DDP (transformers turns it on without gradient checkpointing, and warns every step)
        ddp_find_unused_parameters=False,
        torch_compile=train.compile,
    )
    kwargs.update(keep_arguments(train, has_eval))  # train.keep: best / early stopping (lorakit.train.keep)
    return kwargs
