"""`lorakit env`: what this machine has, and what lorakit will choose on it by default."""

from __future__ import annotations

from typing import Any

from lorakit.model import has_flash_attention, resolve_attn, resolve_device, resolve_precision
from lorakit.outputs import package_versions
from lorakit.train.args import resolve_optim
from lorakit.train.attention import LABEL, NAME, VARLEN_KERNELS
from lorakit.train.kernels import choose_compile, choose_liger
from lorakit.train.speed import choose_loss, has_liger


def describe_environment() -> dict[str, Any]:
    import torch

    device = resolve_device()
    detected: dict[str, Any] = {
        "device": device,
        "cpu threads": torch.get_num_threads(),
        "flash-attn installed": has_flash_attention(),
        "liger-kernel installed": has_liger(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        detected.update({
            "gpu": props.name,
            "gpu memory (GiB)": round(props.total_memory / 2**30, 1),
            "compute capability": f"{props.major}.{props.minor}",
            "bf16 supported": torch.cuda.is_bf16_supported(),
        })
    loss, loss_reason = choose_loss("auto", device)
    liger, liger_reason = choose_liger("auto", device, detected["liger-kernel installed"], None, True)
    chosen = {
        "precision": resolve_precision("auto", device),
        "attention": describe_attention(resolve_attn("auto", device)),
        "liger kernels": f"{'on' if liger else 'off'} ({liger_reason}; train.liger: true/false to choose)",
        "torch.compile": choose_compile(False, device)[1],
        "loss": f"{loss} ({loss_reason})",
        "batching": "padding-free when a probe on the loaded model shows packed == unpacked logits, "
        "else length-grouped (SFT at micro-batch 1: neither, there is no padding; DPO packs a pair's two sequences)",
        "optimizer (lora)": resolve_optim("auto", "lora", device),
        "optimizer (qlora)": resolve_optim("auto", "qlora", device),
    }
    return {"detected": detected, "chosen": chosen, "versions": package_versions()}


def describe_attention(loaded: str) -> str:
    """The attention a run gets: the implementation models load with, and what packed rows run on."""
    if loaded in VARLEN_KERNELS:
        return f"{loaded} (its variable-length kernel runs packed rows per sequence)"
    return (f"{loaded}; packed rows: {LABEL} ({NAME}) after a probe on the loaded model, for models whose layers are "
            f"all full causal attention (model.attn_implementation: sdpa keeps the block-diagonal mask)")
