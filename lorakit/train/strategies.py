"""Which distribution strategy a run uses, which combinations lorakit refuses, and the accelerate config it writes.

Pure and torch-free: the launcher calls it before anything starts, and every training process again before it loads
weights (a run started with `accelerate launch` or `torchrun` directly is checked the same way).

The strategies are accelerate's (lorakit distributes nothing itself):
- ddp: every process holds the whole model; gradients are averaged (PyTorch DDP; gloo on the CPU, NCCL on GPUs).
- fsdp: weights, gradients and optimizer states sharded over the processes (PyTorch FSDP; FSDP2 for LoRA, the
  FSDP1 settings PEFT documents for QLoRA, whose 4-bit weights are stored in the compute dtype so FSDP can shard them).
- zero2 / zero3: DeepSpeed ZeRO stage 2 (optimizer states and gradients sharded) / 3 (weights too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError
from lorakit.model import quant_storage_dtype  # noqa: F401  (moved to lorakit.model, which loads the base)
from lorakit.vram.sharding import STRATEGIES  # noqa: F401  (one list: the planner's per-GPU arithmetic covers each)

BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


@dataclass(frozen=True)
class Plan:
    """How many processes, with which strategy, launched with which accelerate config (None: lorakit writes one)."""

    num_processes: int
    strategy: str
    accelerate_config: Path | None = None
    num_machines: int = 1

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def per_machine(self) -> int:
        return max(self.num_processes // max(self.num_machines, 1), 1)

    @property
    def shards_weights(self) -> bool:
        """Each process holds only a shard of the weights: saving the adapter gathers them on every process."""
        return self.strategy in ("fsdp", "zero3")


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"accelerate config {path} not found",
                          hint="write one with `accelerate config --config_file FILE`, or drop --accelerate-config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})", hint="fix the accelerate config") \
            from None
    if not isinstance(data, dict) or "distributed_type" not in data:
        raise ConfigError(f"{path} is not an accelerate config (no distributed_type)",
                          hint="write one with `accelerate config --config_file FILE`")
    return data


def strategy_of_accelerate_config(data: dict[str, Any]) -> str:
    kind = str(data.get("distributed_type", "")).upper()
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED":
        stage = int((data.get("deepspeed_config") or {}).get("zero_stage", 2))
        return "zero3" if stage >= 3 else "zero2"  # stage 0/1 shard less than 2; lorakit checks them like zero2
    return "ddp"


def plan_from_recipe(recipe) -> Plan:
    """The plan a recipe asks for; with distributed.accelerate_config, that file's settings (and num_processes
    from the recipe when it sets more than one)."""
    section = recipe.distributed
    if section.accelerate_config is None:
        return Plan(section.num_processes, section.strategy)
    path = Path(section.accelerate_config).expanduser()
    data = read_accelerate_config(path)
    strategy = strategy_of_accelerate_config(data)
    if "strategy" in section.model_fields_set and section.strategy != strategy:
        raise ConfigError(f"distributed.strategy is {section.strategy}, but the accelerate config {path} says "
                          f"{data.get('distributed_type')} ({strategy})",
                          hint="drop --strategy (the accelerate config decides), or change the config")
    processes = section.num_processes if section.num_processes > 1 else int(data.get("num_processes") or 1)
    return Plan(processes, strategy, path, int(data.get("num_machines") or 1))


def launched_plan(world_size: int) -> Plan:
    """The plan of a process that accelerate (or torchrun) started: accelerate's environment says the strategy."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        strategy = "fsdp"
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        strategy = "zero3" if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2") == "3" else "zero2"
    else:
        strategy = "ddp"
    machines = max(world_size // max(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)), 1), 1)
    return Plan(world_size, strategy, None, machines)


def check_plan(recipe, plan: Plan, device: str, gpus: int, deepspeed_installed: bool) -> None:
    """Refuse what cannot work, before any weights load: every problem at once, each with its reason."""
    problems: list[tuple[str, str]] = []
    if not plan.distributed and "strategy" in recipe.distributed.model_fields_set and plan.strategy != "ddp":
        problems.append((f"strategy {plan.strategy} with one process shards nothing",
                         "add --num-processes N (one per GPU)"))
    if plan.distributed and plan.strategy != "ddp":
        if device != "cuda":
            if plan.strategy == "fsdp":
                problems.append(("fsdp needs CUDA GPUs: accelerate runs FSDP only on GPUs (on the CPU it ignores "
                                 "its FSDP settings and the run would silently be plain DDP)",
                                 "use --strategy ddp on the CPU"))
            else:
                problems.append((f"{plan.strategy} needs CUDA GPUs: accelerate launches DeepSpeed only on GPUs",
                                 "use --strategy ddp on the CPU"))
        elif plan.strategy.startswith("zero") and not deepspeed_installed:
            problems.append((f"{plan.strategy} needs DeepSpeed, which is not installed", "pip install deepspeed"))
        if recipe.method == "qlora" and plan.strategy == "zero3":
            problems.append(("QLoRA under zero3 needs the base built inside DeepSpeed's zero.Init, and lorakit "
                             "loads the 4-bit base before DeepSpeed starts",
                             "use --strategy fsdp (QLoRA under FSDP) or zero2"))
        if plan.strategy == "fsdp" and recipe.train.optim in BNB_OPTIMIZERS:
            problems.append((f"train.optim {recipe.train.optim} under fsdp: bitsandbytes optimizers are not sharded "
                             "by FSDP (PEFT documents that paged_adamw_8bit fails to save checkpoints there)",
                             "use train.optim auto (adamw_torch under FSDP)"))
        if plan.shards_weights and recipe.train.loss == "plain":
            problems.append((f"train.loss plain under {plan.strategy}: the plain head reads the LM head's weight "
                             "directly, which is sharded there", "use train.loss auto or fused"))
    if plan.distributed and device == "cuda" and plan.accelerate_config is None and plan.per_machine > gpus:
        problems.append((f"{plan.num_processes} processes, but this machine has {gpus} CUDA GPU"
                         f"{'s' if gpus != 1 else ''}", f"use --num-processes {max(gpus, 1)} (one per GPU)"))
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"distributed: {problems[0][0]}", hint=problems[0][1])
        raise ConfigError("distributed: " + "; ".join(p for p, _ in problems), hint="; ".join(h for _, h in problems))


def accelerate_config(plan: Plan, method: str) -> dict[str, Any]:
    """The accelerate config lorakit writes for a local launch (single machine).

    mixed_precision stays 'no': the recipe's precision reaches the trainer as bf16/fp16, which accelerate follows.
    DDP is MULTI_GPU even on the CPU: accelerate's CPU launcher needs MPI, while MULTI_GPU goes through torchrun and
    the trainer's accelerator picks gloo when there is no GPU.
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": "no",
        "num_machines": 1,
        "num_processes": plan.num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": False,
    }
    if plan.strategy == "ddp":
        config["gpu_ids"] = "all"
    elif plan.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        common = {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_cpu_ram_efficient_loading": True,
                  "fsdp_offload_params": False, "fsdp_state_dict_type": "FULL_STATE_DICT",
                  "fsdp_activation_checkpointing": False}  # the recipe's gradient_checkpointing applies
        if method == "qlora":
            # PEFT's FSDP-QLoRA guide (peft docs/source/accelerate/fsdp.md): FSDP1, flat parameters, rank 0 loads.
            config["fsdp_config"] = {**common, "fsdp_version": 1, "fsdp_sharding_strategy": "FULL_SHARD",
                                     "fsdp_backward_prefetch": "BACKWARD_PRE", "fsdp_forward_prefetch": False,
                                     "fsdp_sync_module_states": True, "fsdp_use_orig_params": False}
        else:
            config["fsdp_config"] = {**common, "fsdp_version": 2, "fsdp_reshard_after_forward": True}
    else:
        stage = 3 if plan.strategy == "zero3" else 2
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_multinode_launcher": "standard",
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero_stage": stage,
            # lorakit loads the base before DeepSpeed starts: ZeRO-3 shards it when the trainer prepares the model
            "zero3_init_flag": False,
        }
        if stage == 3:
            config["deepspeed_config"]["zero3_save_16bit_model"] = True  # the adapter is gathered to save it
    return config
