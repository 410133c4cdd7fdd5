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
see no launch folder, rank 0 prints and the others stay quiet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from lorakit.errors import LorakitError, RunInterrupted

LAUNCH_DIR_ENV = "LORAKIT_LAUNCH_DIR"
RESUME_HINT_ENV = "LORAKIT_RESUME_HINT"
ERRORS_DIR = "errors"
LAUNCHER_LOG = "launcher.log"
# How long accelerate's launcher lets the training processes finish a step and save after Ctrl-C before it kills them.
SHUTDOWN_SECONDS = "900"


# ---------------------------------------------------------------------------------------------------------------
# The training processes' side


def launch_dir() -> Path | None:
    value = os.environ.get(LAUNCH_DIR_ENV)
    return Path(value) if value else None


def join_launch() -> None:
    """At the start of every command in a training process: rank 0 keeps the terminal; under lorakit's launcher the
    other ranks write to their log file, under a plain `accelerate launch` / `torchrun` they stay quiet."""
    from lorakit.train.distributed import world

    me = world()
    if not me.distributed or me.is_main:
        return
    folder = launch_dir()
    if folder is None:
        from lorakit.console import err, out

        err.quiet = out.quiet = True
        return
    log = os.open(folder / f"rank-{me.rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def report_failure(message: str, hint: str | None, exit_code: int, kind: str) -> bool:
    """In a training process started by lorakit's launcher: leave the failure for the parent to report (True);
    elsewhere False, and the caller prints it. `kind`: error | interrupted | unexpected."""
    from lorakit.train.distributed import world

    folder = launch_dir()
    if folder is None or not world().distributed:
        return False
    me = world()
    record = {"rank": me.rank, "kind": kind, "message": message, "hint": hint, "exit_code": exit_code,
              "time": time.time()}
    errors = folder / ERRORS_DIR
    errors.mkdir(exist_ok=True)
    tmp = errors / f".rank-{me.rank}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, errors / f"rank-{me.rank}.json")
    return True


def quiet_child() -> bool:
    """A training process of lorakit's launcher: the parent prints the result."""
    from lorakit.train.distributed import world

    return launch_dir() is not None and world().distributed


def resume_hint(default: str) -> str:
    return os.environ.get(RESUME_HINT_ENV) or default


# ---------------------------------------------------------------------------------------------------------------
# The parent's side


def needs_launch(recipe) -> bool:
    from lorakit.train.distributed import world
    from lorakit.train.strategies import plan_from_recipe

    return plan_from_recipe(recipe).distributed and not world().distributed


def run_training(stage: str, recipe, force: bool = False, resume: bool = False, resume_hint: str = "",
                 callbacks: Sequence = (), debug: bool = False):
    """Train `recipe` (an SFT, DPO or GRPO recipe) in this process, or on `recipe.distributed.num_processes` processes
    under accelerate. Extra TrainerCallbacks apply in-process only (they cannot cross into other processes)."""
    if needs_launch(recipe):
        return launch_training(stage, recipe, force, resume, resume_hint, debug)
    if stage == "sft":
        from lorakit.train.sft import run_sft

        return run_sft(recipe, force=force, resume=resume, resume_hint=resume_hint, callbacks=callbacks)
    if stage == "grpo":
        from lorakit.train.grpo import run_grpo

        return run_grpo(recipe, force=force, resume=resume, resume_hint=resume_hint, callbacks=callbacks)
    from lorakit.train.dpo import run_dpo

    return run_dpo(recipe, force=force, resume=resume, resume_hint=resume_hint, callbacks=callbacks)


def local_devices() -> tuple[str, int]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    return "cpu", 0


def precheck(recipe, plan, force: bool, resume: bool):
    """What a training process would refuse first, checked once here: N processes need not start to say it.
    Returns the recipe as it will train (a DPO run takes method and LoRA from its SFT run)."""
    from importlib.util import find_spec

    from lorakit.console import err
    from lorakit.train.lifecycle import open_run, with_parent
    from lorakit.train.strategies import check_plan

    recipe, parent = with_parent(recipe)
    device, gpus = local_devices()
    check_plan(recipe, plan, device, gpus, find_spec("deepspeed") is not None)
    quiet, err.quiet = err.quiet, True  # rank 0 says "starting fresh" itself
    try:
        open_run(recipe, parent, force, resume, plan.num_processes)
    finally:
        err.quiet = quiet
    return recipe


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(stage: str, plan, method: str, folder: Path, recipe_file: Path, force: bool, resume: bool,
                   debug: bool) -> list[str]:
    import yaml

    from lorakit.train.strategies import accelerate_config

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


def launch_training(stage: str, recipe, force: bool, resume: bool, resume_hint: str, debug: bool = False):
    """Run the training on recipe.distributed.num_processes processes under accelerate; its RunResult."""
    import subprocess

    import yaml

    from lorakit.console import info
    from lorakit.runs import read_manifest
    from lorakit.train.lifecycle import RunResult
    from lorakit.train.strategies import plan_from_recipe

    plan = plan_from_recipe(recipe)
    method = precheck(recipe, plan, force, resume).method
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
        summary = read_manifest(recipe.output_dir).get("summary", {})
        shutil.rmtree(folder, ignore_errors=True)
        return RunResult(Path(recipe.output_dir), summary)
    failure, keep = explain_failure(folder, code, recipe, plan, resume_hint)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    raise failure


@contextlib.contextmanager
def forwarded_signals(process) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP of the parent become one SIGINT each for accelerate's launcher."""
    import threading

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


def explain_failure(folder: Path, code: int, recipe, plan, resume_hint: str) -> tuple[LorakitError, bool]:
    """The one error that explains why the training processes stopped, and whether the launch folder's logs are
    worth keeping (they are for crashes, not for refused input)."""
    from lorakit import compat
    from lorakit.runs import RunFolder

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
