"""The TrainerCallbacks lorakit adds to every training run: metrics.jsonl, Rich progress, complete-checkpoint marks,
the first step's start, and a checkpoint after Ctrl-C."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lorakit.console import err
from lorakit.outputs import RunFolder
from lorakit.outputs.integrity import mark_checkpoint_complete
from lorakit.train.distributed import stop_requested


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


class MarkCheckpoints(TrainerCallback):
    """Mark each checkpoint complete once the Trainer has saved all of it (on_save comes after the last file), so a
    process killed mid-save leaves a checkpoint `--resume` knows to skip (lorakit.outputs.layout.COMPLETE_MARK)."""

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            mark_checkpoint_complete(checkpoint, state.global_step)


class FirstStep(TrainerCallback):
    """Notes when the first training step begins: everything before it is setup, a resume's checkpoint loading too."""

    reached = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.reached = True


@dataclass
class InterruptFlag:
    """Set by the Ctrl-C handler (lorakit.train.loop.ctrl_c_saves), read by SaveOnInterrupt."""

    raised: bool = False


class SaveOnInterrupt(TrainerCallback):
    """After Ctrl-C, finish the current step, save a checkpoint and stop: every process at the same step."""

    def __init__(self, flag: InterruptFlag):
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        if stop_requested(self.flag.raised):
            self.flag.raised = True
            control.should_save = True
            control.should_training_stop = True
