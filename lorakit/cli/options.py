"""The options several commands take, defined once (each a reusable `Annotated` type)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML (see recipes/).")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override any recipe field: section.key=value (repeatable)."),
]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Base model: hub id, folder or builtin:tiny-llama.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", help="Training data: file, folder or hub dataset id.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Run folder to write.")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.")]
EpochsOpt = Annotated[Optional[float], typer.Option("--epochs", help="Passes over the data.")]
LrOpt = Annotated[Optional[float], typer.Option("--learning-rate", "--lr", help="Peak learning rate.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
NoPreflightOpt = Annotated[bool, typer.Option("--no-preflight", help="Skip the GPU-memory check before loading.")]
NumProcessesOpt = Annotated[Optional[int], typer.Option(
    "--num-processes", "-n", min=1, help="Train on N processes (one per GPU) through accelerate; global batch = "
    "micro-batch x accumulation x N.")]
StrategyOpt = Annotated[Optional[str], typer.Option(
    "--strategy", help="With --num-processes: ddp (default), fsdp, zero2 or zero3.")]
AccelerateConfigOpt = Annotated[Optional[Path], typer.Option(
    "--accelerate-config", help="An accelerate config file to launch with (several machines, your own FSDP/DeepSpeed "
    "settings) instead of the one lorakit writes.")]
