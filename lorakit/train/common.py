"""What SFT and DPO runs share: trainer arguments from a recipe, progress, metrics, Ctrl-C, resume, finishing.

TRL does the training loop; this module only turns a recipe into TrainingArguments and wires a run folder around
the trainer: Rich progress on stderr, `metrics.jsonl`, a checkpoint on Ctrl-C, and resuming from the last
checkpoint with the optimizer, scheduler, RNG and data position restored (the Trainer's own resume does that).
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lorakit.console import err, warn
from lorakit.errors import LorakitError, RunInterrupted
from lorakit.runs import CHECKPOINTS_DIR as CHECKPOINTS
from lorakit.runs import RunFolder
from lorakit.train.keep import keep_arguments

BNB_OPTIMIZERS = {"adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"}


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

    from lorakit.errors import ConfigError

    available = set(get_available_reporting_integrations())
    for target in report_to:
        if target not in available:
            raise ConfigError(f"train.report_to lists {target}, which is not installed",
                              hint=f"pip install {target}, or remove it from train.report_to")


def training_kwargs(train, run: RunFolder, device: str, precision: str, method: str, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig and DPOConfig. Under several processes each takes
    micro_batch_size rows per step: the trainer's accelerator shards the data and averages the gradients."""
    from lorakit.train.distributed import world
    from lorakit.train.strategies import launched_plan

    strategy = launched_plan(world().size).strategy if world().distributed else "ddp"
    if train.activation_offloading and device != "cuda":
        # TRL's offloading needs an accelerator stream (it fails at start on a CPU-only torch); on the CPU the
        # activations are already in host memory, so there is nothing to move.
        from lorakit.console import info

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


# ---------------------------------------------------------------------------------------------------------------
# Callbacks


class MetricsLog(TrainerCallback):
    """Appends every log (train loss, eval loss, learning rate, DPO rewards...) to metrics.jsonl."""

    def __init__(self, run: RunFolder, extra: dict[str, Any] | None = None):
        self.run = run
        self.extra = extra or {}

    def records(self) -> list[dict[str, Any]]:
        """The whole run's log, steps before a resume included."""
        return self.run.read_metrics()

    def on_step_end(self, args, state, control, **kwargs):
        # The trainer logs every logging_steps only; the last step's loss is what the summary calls final.
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        # every process gets the same (already averaged) logs; one writes them
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time": round(time.time(), 3)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        record.update(self.extra)
        record.update(cuda_peak_memory(args))
        with open(self.run.metrics_file, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def cuda_peak_memory(args) -> dict[str, float]:
    """The measured CUDA peaks so far, next to the estimate in metrics.jsonl (nothing off CUDA)."""
    import torch

    if getattr(args, "device", None) is None or args.device.type != "cuda":
        return {}
    return {"cuda_max_allocated_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 3),
            "cuda_max_reserved_gib": round(torch.cuda.max_memory_reserved() / 1024**3, 3)}


class RichProgress(TrainerCallback):
    """One progress bar on stderr: step, loss, learning rate, tokens/s and ETA."""

    def __init__(self, label: str, show_keys: tuple[str, ...] = ("loss",)):
        self.label = label
        self.show_keys = show_keys
        self.progress = None
        self.task = None
        self.last_tokens: tuple[float, float] | None = None
        self.fields: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.total = state.max_steps
        self.started = time.time()
        self.start_step = state.global_step
        if not err.is_terminal:
            return  # logs and CI get one line per logging step instead of a live bar
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=err,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps, completed=state.global_step, stats="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        train_parts = [f"{key.split('/')[-1]} {logs[key]:.4f}" for key in self.show_keys if key in logs]
        if "learning_rate" in logs:
            train_parts.append(f"lr {logs['learning_rate']:.2e}")
        tokens = logs.get("num_tokens")
        if tokens is not None:
            now = time.time()
            if self.last_tokens is not None and now > self.last_tokens[1]:
                rate = (tokens - self.last_tokens[0]) / (now - self.last_tokens[1])
                train_parts.append(f"{rate:,.0f} tok/s")
            self.last_tokens = (tokens, now)
        if train_parts:
            self.fields["train"] = "  ".join(train_parts)
        if "eval_loss" in logs:
            self.fields["eval"] = f"eval_loss {logs['eval_loss']:.4f}"
        stats = "  ".join(self.fields[k] for k in ("train", "eval") if k in self.fields)
        if self.progress is not None:
            self.progress.update(self.task, stats=stats)
            return
        where = f"{self.label} step {state.global_step}/{self.total}"
        if train_parts and any(key in logs for key in self.show_keys):
            err.print(f"{where}  {self.fields['train']}  eta {self._eta(state)}", markup=False, highlight=False,
                      soft_wrap=True)
        if "eval_loss" in logs:
            err.print(f"{where}  {self.fields['eval']}", markup=False, highlight=False, soft_wrap=True)

    def _eta(self, state) -> str:
        done = state.global_step - self.start_step
        if done <= 0:
            return "?"
        left = (time.time() - self.started) / done * (self.total - state.global_step)
        return time.strftime("%H:%M:%S", time.gmtime(max(left, 0)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


@dataclass
class InterruptFlag:
    raised: bool = False


class MarkCheckpoints(TrainerCallback):
    """Mark each checkpoint complete once the Trainer has saved all of it (on_save comes after the last file), so a
    process killed mid-save leaves a checkpoint `--resume` knows to skip (lorakit.integrity.COMPLETE_MARK)."""

    def on_save(self, args, state, control, **kwargs):
        from pathlib import Path

        from lorakit.integrity import mark_checkpoint_complete

        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            mark_checkpoint_complete(checkpoint, state.global_step)


class FirstStep(TrainerCallback):
    """Notes when the first training step begins: everything before it is setup, a resume's checkpoint loading too."""

    reached = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.reached = True


class SaveOnInterrupt(TrainerCallback):
    """After Ctrl-C, finish the current step, save a checkpoint and stop: every process at the same step."""

    def __init__(self, flag: InterruptFlag):
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        from lorakit.train.distributed import stop_requested

        if stop_requested(self.flag.raised):
            self.flag.raised = True
            control.should_save = True
            control.should_training_stop = True


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


@dataclass
class TrainOutcome:
    global_step: int
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def execute(trainer, run: RunFolder, label: str, show_keys: tuple[str, ...], resume_hint: str,
            estimate=None) -> TrainOutcome:
    """Train inside the run folder with progress, metrics, Ctrl-C checkpointing and resume."""
    from lorakit.train.distributed import on_main, world

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
        if me.is_main:
            run.trim_metrics(int(checkpoint.name.split("-")[-1]))
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
            # it trips over there is the checkpoint's content, which lorakit.integrity cannot fully check.
            from lorakit.integrity import Damaged

            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise Damaged(run.owner, f"{run.staging.name}/{CHECKPOINTS}/{checkpoint.name}",
                          f"the Trainer cannot load it ({type(exc).__name__}: {reason})",
                          hint=f"delete {run.staging.name}/{CHECKPOINTS}/{checkpoint.name} to resume from the "
                               "checkpoint before it, or pass --force to start over") from None
        finally:
            close_loggers()
    if flag.raised:
        raise RunInterrupted(
            f"interrupted at step {trainer.state.global_step}; a checkpoint was saved in {run.staging}",
            hint=f"resume with: {resume_hint}",
        )
    return TrainOutcome(trainer.state.global_step, metrics.records(), time.time() - started)


def logger_error(exc: Exception) -> LorakitError | None:
    """A logger that could not start (wandb without an account or offline mode) is the user's setting to fix, not a
    crash: its error, by type, as a clean message."""
    import sys

    if "wandb" in sys.modules:
        from wandb import errors as wandb_errors

        if isinstance(exc, wandb_errors.Error):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            from lorakit.errors import ConfigError

            return ConfigError(f"train.report_to wandb: wandb could not start ({first})",
                               hint="log locally with WANDB_MODE=offline (upload later with `wandb sync`), or log in: "
                                    "`wandb login` or WANDB_API_KEY; or drop wandb from train.report_to")
    return None


def close_loggers() -> None:
    """End the wandb run this training opened: transformers leaves it open, so the next stage of a pipeline (dpo
    after sft, in one process) would log into the same run. (trackio's callback finishes its run itself.)"""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def summarize_losses(records: list[dict[str, Any]], key: str = "loss") -> dict[str, float]:
    values = [r[key] for r in records if key in r]
    if not values:
        return {}
    return {f"first_{key}": values[0], f"final_{key}": values[-1]}
