"""The long-context question: the longest sequence a run trains on one GPU, with lorakit's defaults and with each
memory option, one sequence per micro-batch.

Each row is a binary search over the sequence length (lorakit.vram.plan.max_seq_len, multiples of 128) on the
estimate with one change applied to the run's settings; `auto` choices that depend on the GPU's memory (tiled MLPs)
are made per length for that GPU, as a run makes them. The options are what a user can switch in a recipe, in
order of what they cost: activation offloading moves the layer inputs kept for backward to pinned host RAM
(speed: one copy each way per layer), LoRA dropout 0 drops the dropped-out copies of every adapted layer's input,
and the rows without tiles or with PEFT's fp32 upcast show what those defaults buy. The last row is the usual
Hugging Face QLoRA set-up (PEFT's fp32 upcast, the model's own loss over the full logits, checkpointing on), the
configuration Unsloth's "HF + FA2" column describes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lorakit.vram.catalog import GPU
from lorakit.vram.estimate import Setup
from lorakit.vram.plan import max_seq_len
from lorakit.vram.shapes import ModelShape


@dataclass(frozen=True)
class ContextOption:
    key: str
    label: str
    change: dict[str, Any]
    recipe: str  # how to ask for it in a recipe


OPTIONS = (
    ContextOption("defaults", "the settings as given", {}, ""),
    ContextOption("offloading", "+ activation offloading", {"activation_offloading": True},
                  "train.activation_offloading: true"),
    ContextOption("offloading_no_dropout", "+ activation offloading, LoRA dropout 0",
                  {"activation_offloading": True, "lora_dropout": 0.0},
                  "train.activation_offloading: true, lora.dropout: 0.0"),
    ContextOption("no_tiles", "without tiled MLPs", {"tiled_mlp": False}, "train.tiled_mlp: false"),
    ContextOption("fp32_upcast", "with PEFT's fp32 upcast (4-bit base)", {"upcast_non_quantized": "all"},
                  "qlora.upcast_to_fp32: true"),
    ContextOption("hf_usual", "usual Hugging Face set-up: fp32 upcast (4-bit), full-logits loss, no tiles",
                  {"upcast_non_quantized": "all", "loss": "plain", "tiled_mlp": False}, "(not lorakit)"),
)


@dataclass
class ContextRow:
    option: ContextOption
    max_seq_len: int
    applies: bool = True  # False: the option is already in the settings, or means nothing for them

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.option.key, "label": self.option.label, "recipe": self.option.recipe,
                "max_seq_len": self.max_seq_len if self.applies else None}


def applies(option: ContextOption, setup: Setup) -> bool:
    s = setup.resolved()
    if s.stage == "inference":
        return option.key == "defaults"
    if option.key.startswith("offloading") and s.activation_offloading and (
            option.key == "offloading" or s.lora_dropout == 0.0):
        return False
    if option.key == "fp32_upcast" and not s.quantized:
        return False
    if option.key == "no_tiles" and s.tiled_mlp is False:
        return False
    return True


def max_context(shape: ModelShape, setup: Setup, gpu: GPU) -> list[ContextRow]:
    """The longest trainable sequence for each option (batch 1; 0: not even 128 tokens fit)."""
    one = replace(setup, batch_size=1)
    rows = []
    for option in OPTIONS:
        if not applies(option, one):
            rows.append(ContextRow(option, 0, applies=False))
            continue
        rows.append(ContextRow(option, max_seq_len(shape, replace(one, **option.change), gpu)))
    return rows
