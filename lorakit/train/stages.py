"""Every training stage lorakit runs, by name. A new stage (GRPO) is a module that supplies a
`lorakit.train.lifecycle.Stage` (its data and its trainer), a recipe class in lorakit.config, and one line here."""

from __future__ import annotations

from lorakit.train.dpo import DPO
from lorakit.train.lifecycle import Stage
from lorakit.train.sft import SFT

STAGES: dict[str, Stage] = {stage.name: stage for stage in (SFT, DPO)}
