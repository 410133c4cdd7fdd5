"""`lorakit env`: what this machine has, and what lorakit will choose on it by default."""

from __future__ import annotations

from typing import Any, Callable

from lorakit.errors import ConfigError
from lorakit.export import gguf_converter, llmcompressor_env
from lorakit.model import choose_kbit_upcast, has_flash_attention, resolve_attn, resolve_device, resolve_precision
from lorakit.outputs import package_versions
from lorakit.train.args import resolve_optim
from lorakit.train.attention import LABEL, NAME, VARLEN_KERNELS
from lorakit.train.kernels import choose_compile, choose_liger
from lorakit.train.speed import choose_loss, has_liger
from lorakit.train.token_batches import CPU_BUDGET
from lorakit.vram.estimate import MIN_TILE_TOKENS


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
        "precision (grpo)": grpo_precision_line(device),
        "attention": describe_attention(resolve_attn("auto", device)),
        "liger kernels": f"{'on' if liger else 'off'} ({liger_reason}; train.liger: true/false to choose)",
        "torch.compile": choose_compile(False, device)[1],
        "loss": f"{loss} ({loss_reason})",
        "batching": "padding-free when a probe on the loaded model shows packed == unpacked logits, "
        "else length-grouped (by-example SFT at micro-batch 1: neither, there is no padding; DPO packs a pair's two sequences)",
        "micro-batches": ("SFT: a step's micro_batch_size x gradient_accumulation_steps examples in padding-free "
                          "forward passes of up to "
                          + ("the longest row the planner says fits this GPU" if device == "cuda" else
                             f"{CPU_BUDGET:,} tokens") + " (train.micro_batch_tokens: auto; null = by examples)"),
        "tiled MLP": (f"auto: decoder MLPs in tiles of max({MIN_TILE_TOKENS}, hidden size) tokens, with gradient "
                      "checkpointing, when "
                      + ("a run would not fit this GPU untiled" if device == "cuda" else
                         "one recomputed layer is the largest activation term")
                      + " (train.tiled_mlp: true/false to choose)"),
        "4-bit base (qlora)": choose_kbit_upcast("auto", resolve_precision("auto", device))[1]
        + " (qlora.upcast_to_fp32: auto)",
        "optimizer (lora)": resolve_optim("auto", "lora", device),
        "optimizer (qlora)": resolve_optim("auto", "qlora", device),
    }
    return {"detected": detected, "chosen": chosen, "tools": describe_tools(), "versions": package_versions()}


# Tools lorakit fetches and manages itself (pinned, into LORAKIT_CACHE/tools), by the name `--prefetch` takes:
# name -> (status: what `lorakit env` shows, fetch: download it now and return where it is).
MANAGED_TOOLS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[], Any]]] = {
    gguf_converter.TOOL_NAME: (gguf_converter.status, gguf_converter.fetch_converter),
    llmcompressor_env.TOOL_NAME: (llmcompressor_env.status, llmcompressor_env.ensure_env),
}


def describe_tools() -> dict[str, str]:
    """One line per managed tool: where it is (or the command that fetches it) and what it is."""
    lines = {}
    for name, (status, _) in MANAGED_TOOLS.items():
        state = status()
        where = state["location"] if state["installed"] else f"not fetched yet (`{state['fetch']}`, or on first use)"
        lines[name] = f"{where}; {state['source']}" + (f"; installed: {state['versions']}" if state.get("versions")
                                                         else "")
    return lines


def prefetch(name: str) -> Any:
    """Fetch a managed tool now (for a machine that goes offline later); returns where it is."""
    if name not in MANAGED_TOOLS:
        raise ConfigError(f"--prefetch {name!r} is not a tool lorakit manages",
                          hint=f"one of {', '.join(MANAGED_TOOLS)}")
    return MANAGED_TOOLS[name][1]()


def describe_attention(loaded: str) -> str:
    """The attention a run gets: the implementation models load with, and what packed rows run on."""
    if loaded in VARLEN_KERNELS:
        return f"{loaded} (its variable-length kernel runs packed rows per sequence)"
    return (f"{loaded}; packed rows: {LABEL} ({NAME}) after a probe on the loaded model, for models whose layers are "
            f"all full causal attention (model.attn_implementation: sdpa keeps the block-diagonal mask)")


def grpo_precision_line(device: str) -> str:
    """GRPO's precision: as every stage's on a GPU; on a CPU, bf16 where its instructions compute in bf16."""
    chosen = resolve_precision("auto", device, cpu_bf16=True)
    if device == "cuda":
        return chosen
    why = ("this CPU computes in bf16 natively: avx512_bf16/amx_bf16" if chosen == "bf16" else
           "this CPU has no native bf16 (avx512_bf16/amx_bf16), where bf16 is emulated and slower")
    return f"{chosen} ({why})"
