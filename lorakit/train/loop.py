"""The training loop around TRL's: callbacks wired in, resume from the last complete checkpoint, Ctrl-C saves and
stops, a logger that cannot start or a checkpoint the Trainer cannot load becomes one clean error.

TRL does the training; the Trainer's own resume restores the optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lorakit.console import err
from lorakit.errors import ConfigError, LorakitError, RunError, RunInterrupted
from lorakit.outputs import Damaged, RunFolder
from lorakit.outputs.layout import CHECKPOINTS_DIR
from lorakit.train.callbacks import FirstStep, InterruptFlag, MarkCheckpoints, MetricsLog, RichProgress, SaveOnInterrupt
from lorakit.train.distributed import on_main, world
from lorakit.train.preflight import PreflightResult

if TYPE_CHECKING:
    from transformers import Trainer


@dataclass
class TrainOutcome:
    global_step: int
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@contextmanager
def ctrl_c_saves(flag: InterruptFlag) -> Iterator[None]:
    """First Ctrl-C asks for a clean stop with a checkpoint; a second one aborts at once."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.raised:
            raise KeyboardInterrupt
        flag.raised = True
        err.print("\n[yellow]Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to abort)...[/yellow]")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. some test runners): no handler, plain KeyboardInterrupt
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def execute(trainer: Trainer, run: RunFolder, label: str, show_keys: tuple[str, ...], resume_hint: str,
            estimate: PreflightResult | None = None) -> TrainOutcome:
    """Train inside the run folder with progress, metrics, Ctrl-C checkpointing and resume."""
    me = world()
    flag = InterruptFlag()
    metrics = MetricsLog(run, estimate.metrics() if estimate is not None else None)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    progress = (RichProgress(label, show_keys),) if me.is_main else ()
    for callback in (metrics, *progress, SaveOnInterrupt(flag), MarkCheckpoints()):
        trainer.add_callback(callback)
    # Every process resumes from the checkpoint rank 0 found (each restores its own RNG state from it).
    checkpoint = on_main(lambda: run.latest_checkpoint(me.size) if run.mode == "resume" else None)
    if checkpoint is not None:
        reached = int(checkpoint.name.split("-")[-1])
        if 0 < trainer.args.max_steps < reached:
            # The Trainer would train a step past it (it checks max_steps only after a step).
            raise RunError(f"cannot resume {run.path}: {checkpoint.name} is already at step {reached}, past "
                           f"max_steps {trainer.args.max_steps}",
                           hint=f"resume with --max-steps {reached} or more, or pass --force to start over")
        if me.is_main:
            run.trim_metrics(reached)
        err.print(f"Resuming from {checkpoint.name}")
    elif run.mode == "resume":
        if me.is_main:
            run.trim_metrics(0)  # the steps logged before the interruption are trained again
        err.print("No checkpoint to resume from yet: starting from step 0")
    started = time.time()
    first_step = FirstStep()
    trainer.add_callback(first_step)
    with ctrl_c_saves(flag):
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except Exception as exc:
            mapped = logger_error(exc)
            if mapped is not None:
                raise mapped from None
            if checkpoint is None or first_step.reached or isinstance(exc, LorakitError):
                raise
            # The Trainer loads the checkpoint (weights, optimizer, scheduler, state) before its first step; whatever
            # it trips over there is the checkpoint's content, which lorakit.outputs.integrity cannot fully check.
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise Damaged(run.owner, f"{run.staging.name}/{CHECKPOINTS_DIR}/{checkpoint.name}",
                          f"the Trainer cannot load it ({type(exc).__name__}: {reason})",
                          hint=f"delete {run.staging.name}/{CHECKPOINTS_DIR}/{checkpoint.name} to resume from the "
                               "checkpoint before it, or pass --force to start over") from None
        finally:
            close_loggers()
    # Ctrl-C during the last step: that step finished and nothing is left to train, so the run is complete.
    if flag.raised and trainer.state.global_step < trainer.state.max_steps:
        raise RunInterrupted(
            f"interrupted at step {trainer.state.global_step}; a checkpoint was saved in {run.staging}",
            hint=f"resume with: {resume_hint}",
        )
    return TrainOutcome(trainer.state.global_step, metrics.records(), time.time() - started)


def logger_error(exc: Exception) -> LorakitError | None:
    """A logger that could not start (wandb without an account or offline mode) is the user's setting to fix, not a
    crash: its error, by type, as a clean message."""
    if "wandb" in sys.modules:
        from wandb import errors as wandb_errors

        if isinstance(exc, wandb_errors.Error):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return ConfigError(f"train.report_to wandb: wandb could not start ({first})",
                               hint="log locally with WANDB_MODE=offline (upload later with `wandb sync`), or log in: "
                                    "`wandb login` or WANDB_API_KEY; or drop wandb from train.report_to")
    return None


def close_loggers() -> None:
    """End the wandb run this training opened: transformers leaves it open, so the next stage of a pipeline (dpo
    after sft, in one process) would log into the same run. (trackio's callback finishes its run itself.)"""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def summarize_losses(records: list[dict[str, Any]], key: str = "loss") -> dict[str, float]:
    values = [r[key] for r in records if key in r]
    if not values:
        return {}
    return {f"first_{key}": values[0], f"final_{key}": values[-1]}
