"""What every bench side measures, the same way, in its own process (lorakit's venv or a peer's).

No lorakit import here: bench/llamafactory_side.py runs this module under LLaMA-Factory's own virtual environment.
torch and transformers are imported inside functions, so importing this module is free.

A side is measured between the trainer's `on_train_begin` and `on_train_end` events (dataset preparation, model
loading and saving are outside the window). Inside it:
  * wall seconds, and CPU seconds of the whole process (all threads): tokens per CPU-second move less than tokens per
    wall-second when other programs share the cores;
  * peak resident memory of the process, sampled every 10 ms;
  * every micro-batch that reaches `training_step`: tokens in the tensors (padding included), real tokens (not
    padding) and trained tokens (the positions whose log-probability enters the loss), and the micro-batch's loss.
The trained-token counts let the parent check that every side trained on exactly the same tokens.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

IGNORE = -100


class PeakRSS:
    """Peak resident memory of this process while running (sampled every 10 ms)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(0.01)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def current_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def count_batch(inputs: dict[str, Any]) -> dict[str, int]:
    """Tokens in one micro-batch: in the tensors, real (not padding) and trained.

    Works on every collator the sides use:
      * padded rows (TRL defaults, TRL DPO, LLaMA-Factory DPO): a 0/1 `attention_mask`;
      * padding-free rows (lorakit, TRL `padding_free`, TRL bfd packing): no `attention_mask`, one row, no padding;
      * LLaMA-Factory `neat_packing`: a 4-D block-diagonal float mask, where a padding position attends to nothing;
      * lorakit's padding-free DPO: TRL's padded layout plus `packed_index`, the packed rows the model really runs;
    trained tokens are `completion_mask` positions (TRL DPO: the log-probability of every completion token is
    summed) or shifted labels that are not -100 (SFT, LLaMA-Factory DPO, lorakit's packed DPO).
    """
    input_ids = inputs["input_ids"]
    processed = int(input_ids.numel())
    shape = input_ids.shape
    if "packed_index" in inputs:  # lorakit's padding-free DPO: the model runs these packed rows, not the padded layout
        processed, shape = int(inputs["packed_index"].numel()), inputs["packed_index"].shape
    mask = inputs.get("attention_mask")
    if mask is None:  # padding-free: the row holds real tokens only (no side here pads it to a multiple)
        real = processed
    elif mask.dim() == 2:
        real = int((mask != 0).sum())
    else:  # (batch, 1, query, key) additive mask: a padding query row has no key it may attend to
        real = int((mask[:, 0].amax(dim=-1) == 0).sum())
    if "completion_mask" in inputs:
        trained = int(inputs["completion_mask"].sum())
    elif "labels" in inputs:
        trained = int((inputs["labels"][..., 1:] != IGNORE).sum())
    else:
        raise KeyError(f"cannot tell the trained tokens of a batch with keys {sorted(inputs)}")
    return {"processed": processed, "real": real, "trained": trained, "rows": int(shape[0]),
            "row_length": int(shape[-1])}


def checkpointed_layers(model) -> int:
    """Decoder layers that recompute their activations in backward (transformers' GradientCheckpointingLayer)."""
    return sum(1 for module in model.modules() if getattr(module, "gradient_checkpointing", False) is True)


class AllocatorTrace:
    """Peak bytes the CPU allocator hands out during one window, from torch.profiler's memory events.

    With `profile_memory=True` every allocation and free that goes through c10's CPU allocator (every tensor, and the
    workspaces kernels take from it) is reported to the profiler together with the allocator's running total of
    bytes allocated since profiling began; the largest total is the window's peak above what was alive when it
    opened (weights, optimizer state, data). Unlike RSS it is not blurred by the allocator's caching, freed pages
    the kernel has not reclaimed, or other threads' buffers. One window per process: the profiler's running total
    is process-wide and only tracks allocations made while it runs.
    (torch 2.x: profiler.kineto_results.experimental_event_tree(), _EventType.Allocation, alloc_size /
    total_allocated)
    """

    def __init__(self):
        self._profiler = None
        self.peak = self.allocations = 0
        self.error = None

    def start(self):
        from torch.profiler import ProfilerActivity, profile

        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()

    def stop(self):
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        try:
            from torch._C._profiler import _EventType

            peak, count = 0, 0
            stack = list(self._profiler.profiler.kineto_results.experimental_event_tree())
            while stack:
                node = stack.pop()
                if node.tag == _EventType.Allocation:
                    count += 1
                    peak = max(peak, int(node.extra_fields.total_allocated))
                stack.extend(node.children)
            self.peak, self.allocations = peak, count
        except Exception as exc:  # a torch without these internals: say so in the result instead of a number
            self.error = f"{type(exc).__name__}: {exc}"
        self._profiler = None


class Recorder:
    """Counts micro-batches (by wrapping `training_step`) and times the training window (as a TrainerCallback)."""

    def __init__(self, profile: str | None = None, trace_memory: bool = False):
        self.profile = profile  # a path: run torch.profiler over the training window and write its table there
        # trace the CPU allocator over the first optimizer step (its peak above the step's start); the profiler
        # slows that step, so the tokens/s of a traced run come from the steps after it
        self.trace = AllocatorTrace() if trace_memory else None
        self.traced_tokens = 0
        self._profiler = None
        self.batches: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        self.rss = PeakRSS()
        self.wall = self.cpu = 0.0
        self.gradient_checkpointing_layers = -1

    def wrap_training_step(self, original):
        def training_step(model, inputs, *args, **kwargs):
            counts = count_batch(inputs)
            loss = original(model, inputs, *args, **kwargs)
            counts["loss"] = float(loss.detach().float().mean())
            self.batches.append(counts)
            return loss

        return training_step

    def attach(self, trainer) -> None:
        """Record one trainer built in this process."""
        trainer.training_step = self.wrap_training_step(trainer.training_step)
        trainer.add_callback(self.callback())

    def patch_trainer_class(self) -> None:
        """Record every Trainer of this process (a peer that builds its trainer inside its own entry point)."""
        from transformers import Trainer

        recorder, original = self, Trainer.training_step

        def training_step(self, model, inputs, *args, **kwargs):
            return recorder.wrap_training_step(lambda *a, **k: original(self, *a, **k))(model, inputs, *args,
                                                                                         **kwargs)

        Trainer.training_step = training_step

    def callback(self):
        from transformers import TrainerCallback

        recorder = self

        class Window(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                recorder.gradient_checkpointing_layers = checkpointed_layers(model) if model is not None else -1
                recorder.rss.start()
                if recorder.profile:
                    recorder._profiler = profiled(recorder.profile)
                    recorder._profiler.__enter__()
                recorder._wall0, recorder._cpu0 = time.perf_counter(), time.process_time()

            def on_step_begin(self, args, state, control, **kwargs):
                if recorder.trace is not None and state.global_step == 0 and recorder.trace._profiler is None \
                        and not recorder.step_times:
                    recorder.trace.start()

            def on_step_end(self, args, state, control, **kwargs):
                if recorder.trace is not None and recorder.trace._profiler is not None:
                    recorder.trace.stop()
                    recorder.traced_tokens = sum(b["processed"] for b in recorder.batches)
                recorder.step_times.append(time.perf_counter() - recorder._wall0)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    recorder.logs.append(dict(logs))

            def on_train_end(self, args, state, control, **kwargs):
                recorder.wall = time.perf_counter() - recorder._wall0
                recorder.cpu = time.process_time() - recorder._cpu0
                recorder.rss.stop()
                if recorder._profiler is not None:
                    recorder._profiler.__exit__(None, None, None)

        return Window()

    def result(self, side: str, stage: str, **extra) -> dict[str, Any]:
        total = {key: sum(b[key] for b in self.batches) for key in ("processed", "real", "trained")}
        steps = len(self.step_times)
        losses = [entry["loss"] for entry in self.logs if "loss" in entry]
        import torch

        return {
            "side": side, "stage": stage, "pid": os.getpid(),
            "steps": steps, "micro_batches": len(self.batches),
            "wall_s": self.wall, "cpu_s": self.cpu, "threads": torch.get_num_threads(),
            "peak_rss_gb": self.rss.peak / 1e9,
            "tokens": total,
            "padding_fraction": 1 - total["real"] / max(total["processed"], 1),
            "trained_tokens_per_s": total["trained"] / max(self.wall, 1e-9),
            "real_tokens_per_s": total["real"] / max(self.wall, 1e-9),
            "trained_tokens_per_cpu_s": total["trained"] / max(self.cpu, 1e-9),
            "s_per_step": self.wall / max(steps, 1),
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            # token-weighted mean of the micro-batch losses: with learning_rate 0 every correct side gets the same
            # number (the base model's per-token loss on the data), whatever its batching
            "token_mean_loss": (sum(b["loss"] * b["trained"] for b in self.batches)
                                / max(total["trained"], 1)) if self.batches else None,
            "losses": losses,
            "logps_chosen": [e["logps/chosen"] for e in self.logs if "logps/chosen" in e],
            "logps_rejected": [e["logps/rejected"] for e in self.logs if "logps/rejected" in e],
            "batches": self.batches,
            "step_times": self.step_times,
            "gradient_checkpointing_layers": self.gradient_checkpointing_layers,
            **({"allocator_peak_bytes": self.trace.peak, "allocator_events": self.trace.allocations,
                "allocator_error": self.trace.error, "traced_tokens": self.traced_tokens}
               if self.trace is not None else {}),
            **extra,
        }


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


class profiled:
    """torch.profiler around the training window; writes the operator table (self CPU time) to `path`."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        averages = self.prof.key_averages()
        table = averages.table(sort_by="self_cpu_time_total", row_limit=45)
        by_shape = self.prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                            row_limit=30)
        rows = [{"name": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "cpu_s": e.cpu_time_total / 1e6,
                 "count": e.count} for e in averages]
        Path(self.path).write_text(table + "\n\nby input shape:\n" + by_shape)
        Path(self.path).with_suffix(".json").write_text(json.dumps(rows))
