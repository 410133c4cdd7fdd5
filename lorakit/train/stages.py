"""Every training stage lorakit runs, by name.

A new stage (GRPO) is: a module supplying a `lorakit.train.lifecycle.Stage` (its data and its trainer, built from
`TrainerInputs`; `continues` names the stages whose runs it may start from), its recipe class in lorakit.config
(RECIPES), one line here, and one `TrainingCommand` in lorakit.cli.train. The lifecycle, launcher, manifest, resume
and finishing are shared.
"""

from __future__ import annotations

from lorakit.train.dpo import DPO
from lorakit.train.lifecycle import Stage
from lorakit.train.sft import SFT

STAGES: dict[str, Stage] = {stage.name: stage for stage in (SFT, DPO)}
