"""`--num-processes N`: lorakit relaunches itself under accelerate and reports back as one command.

The command the user typed stays the parent. It checks the recipe and the strategy (before any weights load), writes
the resolved recipe and an accelerate config into a launch folder, and starts `accelerate launch -m lorakit <stage>
--recipe <that recipe>` (`lorakit.train.agent`), which starts one training process per GPU through torchrun. Then:

- Output: rank 0 prints to the user's terminal as a single-process run would; the other ranks write to
  `rank-N.log` in the launch folder, and accelerate's own messages go to `launcher.log` there.
- Errors: every training process that fails leaves a record (message, hint, exit code) in the launch folder instead
  of printing; the parent prints the one that explains the failure (a refused input before a crash it caused on
  another rank, a process killed by a signal before the errors the others then hit) as a single `error:` line.
- Ctrl-C / `kill` of the parent: one SIGINT goes to accelerate's launcher, which hands it to every training process;
  they stop after the same step with a checkpoint (`--resume` continues). A second Ctrl-C aborts.
- On success the parent reads the finished run folder and prints its summary, like a single-process run.

`accelerate launch -m lorakit sft ...` and `torchrun -m lorakit sft ...` work as well: the training processes then
see no launch folder, rank 0 prints and the others stay quiet. The training processes' side of all this is
lorakit.train.launched (light: every command joins the launch first).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from lorakit import compat
from lorakit.config import BaseRecipe
from lorakit.console import err, info
from lorakit.errors import LorakitError, RunInterrupted
from lorakit.outputs import RunFolder, TrainingRunManifest, hold_output, read_manifest
from lorakit.train.distributed import world
from lorakit.train.launched import ERRORS_DIR, LAUNCH_DIR_ENV, LAUNCHER_LOG, RESUME_HINT_ENV
from lorakit.train.lifecycle import RunResult, open_run, train_adapter, with_parent
from lorakit.train.stages import STAGES
from lorakit.train.strategies import Plan, accelerate_config, check_plan, plan_from_recipe

# How long accelerate's launcher lets the training processes finish a step and save after Ctrl-C before it kills them.
SHUTDOWN_SECONDS = "900"


def needs_launch(recipe: BaseRecipe) -> bool:
    return plan_from_recipe(recipe).distributed and not world().distributed


def run_training(stage: str, recipe: BaseRecipe, force: bool = False, resume: bool = False, resume_hint: str = "",
                 callbacks: Sequence = (), debug: bool = False) -> RunResult:
    """Train `recipe` (of a stage in lorakit.train.stages) in this process, or on
    `recipe.distributed.num_processes` processes under accelerate. Extra TrainerCallbacks apply in-process only (they
    cannot cross into other processes)."""
    # one writer per run folder, for the whole command: the processes a launch starts inherit the lock
    with hold_output(recipe.output_dir, f"lorakit {stage}"):
        if needs_launch(recipe):
            return launch_training(stage, recipe, force, resume, resume_hint, debug)
        return train_adapter(STAGES[stage], recipe, force, resume, resume_hint, callbacks)


def local_devices() -> tuple[str, int]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    return "cpu", 0


def precheck(stage: str, recipe: BaseRecipe, plan: Plan, force: bool, resume: bool) -> BaseRecipe:
    """What a training process would refuse first, checked once here: N processes need not start to say it.
    Returns the recipe as it will train (a DPO run takes method and LoRA from its SFT run)."""
    recipe, parent = with_parent(recipe, STAGES[stage].continues)
    device, gpus = local_devices()
    check_plan(recipe, plan, device, gpus, find_spec("deepspeed") is not None)
    quiet, err.quiet = err.quiet, True  # rank 0 says "starting fresh" itself
    try:
        open_run(recipe, parent, force, resume, plan.num_processes)
    finally:
        err.quiet = quiet
    return recipe


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(stage: str, plan: Plan, method: str, folder: Path, recipe_file: Path, force: bool, resume: bool,
                   debug: bool) -> list[str]:
    cmd = [sys.executable, "-m", "lorakit.train.agent"]
    if plan.accelerate_config is not None:
        cmd += ["--config_file", str(plan.accelerate_config)]
    else:
        config_file = folder / "accelerate.yaml"
        config_file.write_text(yaml.safe_dump(accelerate_config(plan, method), sort_keys=False))
        # a port of its own, so two runs on one machine (or a leftover process) do not meet at accelerate's default
        cmd += ["--config_file", str(config_file), "--main_process_port", str(free_port())]
    device, _ = local_devices()
    threads = max((os.cpu_count() or 1) // plan.per_machine, 1) if device == "cpu" else 1
    cmd += ["--num_processes", str(plan.num_processes), "--num_cpu_threads_per_process", str(threads)]
    cmd += ["-m", "lorakit"] + (["--debug"] if debug else []) + [stage, "--recipe", str(recipe_file)]
    return cmd + (["--force"] if force else []) + (["--resume"] if resume else [])


def launch_training(stage: str, recipe: BaseRecipe, force: bool, resume: bool, resume_hint: str,
                    debug: bool = False) -> RunResult:
    """Run the training on recipe.distributed.num_processes processes under accelerate; its RunResult."""
    plan = plan_from_recipe(recipe)
    method = precheck(stage, recipe, plan, force, resume).method
    folder = Path(tempfile.mkdtemp(prefix="lorakit-launch-"))
    recipe_file = folder / "recipe.yaml"
    # what was set, not the defaults filled in: a DPO recipe that leaves lora to its SFT run must still leave it
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_unset=True), sort_keys=False))
    cmd = launch_command(stage, plan, method, folder, recipe_file, force, resume, debug)
    env = {**os.environ, LAUNCH_DIR_ENV: str(folder), RESUME_HINT_ENV: resume_hint or "",
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_SECONDS)}
    info(f"Training on {plan.num_processes} processes ({plan.strategy}) through accelerate"
         + (f" with {plan.accelerate_config}" if plan.accelerate_config else ""))
    # Its own session: the terminal's Ctrl-C reaches only this process, which hands accelerate exactly one SIGINT
    # per Ctrl-C (two would make its launcher kill the training processes before they save).
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    with forwarded_signals(process):
        code = process.wait()
    if code == 0:
        manifest = read_manifest(recipe.output_dir)
        summary = dict(manifest.summary or {}) if isinstance(manifest, TrainingRunManifest) else {}
        shutil.rmtree(folder, ignore_errors=True)
        return RunResult(Path(recipe.output_dir), summary)
    failure, keep = explain_failure(folder, code, recipe, plan, resume_hint)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    raise failure


@contextlib.contextmanager
def forwarded_signals(process) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP of the parent become one SIGINT each for accelerate's launcher."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def read_failures(folder: Path) -> list[dict[str, Any]]:
    records = []
    for file in sorted((folder / ERRORS_DIR).glob("rank-*.json")):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(file.read_text()))
    return sorted(records, key=lambda r: r.get("time", 0))


def explain_failure(folder: Path, code: int, recipe: BaseRecipe, plan: Plan,
                    resume_hint: str) -> tuple[LorakitError, bool]:
    """The one error that explains why the training processes stopped, and whether the launch folder's logs are
    worth keeping (they are for crashes, not for refused input)."""
    records = read_failures(folder)
    log = (folder / LAUNCHER_LOG).read_text(errors="replace") if (folder / LAUNCHER_LOG).exists() else ""
    checkpoint = RunFolder(Path(recipe.output_dir)).latest_checkpoint(plan.num_processes)
    resume = (f"a checkpoint at {checkpoint.name} is waiting: resume with {resume_hint}" if checkpoint and resume_hint
              else "")
    logs = f"the logs of every process are in {folder}"

    refused = [r for r in records if r["kind"] == "error"]
    if refused:
        first = refused[0]
        return _error(first["message"], first.get("hint"), first.get("exit_code", 1)), False
    # SIGTERM is what accelerate's launcher stops the surviving processes with once one has failed
    failures = compat.elastic_failures(log)
    killed = [(rank, exit_code) for rank, exit_code in failures if exit_code < 0 and -exit_code != signal.SIGTERM]
    if killed:
        rank, exit_code = killed[0]
        name = _signal_name(-exit_code)
        return _error(f"training process {rank} (of {plan.num_processes}) was killed by {name}; the others stopped",
                      "; ".join(part for part in (resume, logs) if part), 1), True
    interrupted = [r for r in records if r["kind"] == "interrupted"]
    if interrupted:
        first = next((r for r in interrupted if r["rank"] == 0), interrupted[0])
        return RunInterrupted(first["message"], first.get("hint")), False
    if records:
        first = records[0]
        return _error(f"{first['message']} (training process {first['rank']})",
                      "; ".join(part for part in ("re-run with --debug for the full traceback", resume, logs)
                                if part), first.get("exit_code", 1)), True
    if failures:
        rank, exit_code = failures[0]
        message = f"training process {rank} exited with code {exit_code} without a message"
    else:
        last = [line for line in log.splitlines() if line.strip()][-1:] or [f"exit code {code}"]
        message = f"accelerate could not start the training processes: {last[0].strip()}"
    return _error(message, "; ".join(part for part in (resume, logs) if part), 1), True


def _error(message: str, hint: str | None, exit_code: int) -> LorakitError:
    error = LorakitError(message, hint)
    error.exit_code = exit_code
    return error


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
