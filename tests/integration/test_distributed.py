"""Two training processes on the CPU (DDP over gloo), launched the way a user does: `lorakit sft ... --num-processes
2` in a subprocess. The curve equals one process with the same global batch, the run folder is a normal one (one of
it; PEFT loads it, merge consumes it), a kill -9 of one process and a Ctrl-C both leave a checkpoint that continues
the same curve, and a failure is one error line.

The recipe is the bundled tiny one on 48 rows (3 steps of 16 per epoch, so 12 steps cross three epoch boundaries)
with a constant learning rate, so that a resumed run with a different history of max_steps still means the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorakit.outputs import read_run

from ..conftest import REPO, dpo_recipe, sft_recipe

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="this torch build has no gloo backend")]

STEPS = 12
SHARED = ["data.eval=null", "data.max_rows=48", "train.lr_scheduler_type=constant", "train.warmup_ratio=0",
          "train.logging_steps=1", "train.save_steps=3"]


def cli_args(out: Path, *extra: str) -> list[str]:
    args = ["sft", "--recipe", "recipes/tiny-cpu-sft.yaml", "-o", str(out), "--max-steps", str(STEPS)]
    for assignment in SHARED:
        args += ["--set", assignment]
    return args + ["--num-processes", "2", *extra]


def launch(args: list[str], tmp: Path, **popen) -> subprocess.Popen:
    """`lorakit ARGS` as a user runs it, with launch folders under `tmp` (to find the processes and the leftovers)."""
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "lorakit", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def run_cli(args: list[str], tmp: Path) -> tuple[int, str, str]:
    return finish(launch(args, tmp))


def losses(run: Path) -> dict[int, tuple[float, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in records if "loss" in r}


def assert_same_curve(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference) == list(range(1, STEPS + 1))
    for step in reference:
        assert ours[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-6), f"step {step}"


def assert_same_adapter(run: Path, reference: Path) -> None:
    ours, theirs = (load_file(str(p / "adapter_model.safetensors")) for p in (run, reference))
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=5e-5)  # Adam magnifies 1e-7 gradient noise


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def training_processes(tmp: Path, rank: int | None = None) -> list[int]:
    """Live training processes whose launch folder is under `tmp` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode().split("\0")
                           if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if environ.get("LORAKIT_LAUNCH_DIR", "").startswith(str(tmp)) and "RANK" in environ:
            if rank is None or environ["RANK"] == str(rank):
                pids.append(int(entry.name))
    return pids


def wait_for_line(process: subprocess.Popen, fragment: str, seen: list[str], timeout: float = 600) -> None:
    """Read the command's stderr until a line containing `fragment` (keeping every line in `seen`)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"the command ended before {fragment!r}:\n" + "".join(seen))
        seen.append(line)
        if fragment in line:
            return
    raise AssertionError(f"no {fragment!r} within {timeout} s:\n" + "".join(seen))


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("launches")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, micro-batch 16: the global batch of two processes with micro-batch 8."""
    from lorakit.train.sft import run_sft

    out = tmp_path_factory.mktemp("single") / "sft"
    old = os.getcwd()
    os.chdir(REPO)
    try:
        return run_sft(sft_recipe(out, *SHARED, "train.micro_batch_size=16", max_steps=STEPS)).path
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tmp):
    out = tmp_path_factory.mktemp("ddp") / "sft"
    code, stdout, stderr = run_cli(cli_args(out), tmp)
    assert code == 0, stderr
    return out, stdout, stderr


def test_two_processes_train_the_curve_of_one_with_the_same_global_batch(single, ddp, tmp):
    out, stdout, stderr = ddp
    assert_same_curve(losses(out), losses(single))
    assert_same_adapter(out, single)
    assert "Batch: 16 examples per optimizer step = micro-batch 8 x accumulation 1 x 2 processes (ddp" in stderr
    assert read_run(out).manifest["distributed"] == {"processes": 2, "strategy": "ddp", "global_batch_size": 16}
    # one run folder, one summary; the launch folder is gone; both processes left an RNG state in each checkpoint
    assert [p.name for p in out.parent.iterdir()] == ["sft"]
    assert stdout.count("SFT run") == 1 and "Traceback" not in stderr
    assert not list(tmp.glob("lorakit-launch-*"))
    assert {p.name for p in (out / "checkpoints").glob("checkpoint-*/rng_state_*.pth")} == {"rng_state_0.pth",
                                                                                           "rng_state_1.pth"}


def test_the_adapter_of_two_processes_loads_in_plain_peft_and_merges(ddp, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.export.merge import merge_run

    out = ddp[0]
    run = read_run(out)
    probe = torch.tensor([[4, 10, 55, 120, 33, 8, 91, 2]])
    base = AutoModelForCausalLM.from_pretrained(run.base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        adapted = model(probe).logits
        with model.disable_adapter():
            assert not torch.allclose(adapted, model(probe).logits, atol=1e-3)  # the adapter was trained
    merged = merge_run(out, tmp_path / "merged", dtype="float32")
    assert merged.gap is not None
    standalone = AutoModelForCausalLM.from_pretrained(str(merged.path), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(standalone(probe).logits, adapted, rtol=1e-4, atol=1e-4)


def test_kill_9_of_one_process_and_ctrl_c_leave_checkpoints_that_continue_the_same_curve(ddp, tmp):
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding the training processes needs Linux /proc")
    reference = losses(ddp[0])
    out = tmp / "resumed" / "sft"

    # 1. kill -9 of process 1 once step 4 is logged (the checkpoint of step 3 is then complete on both processes)
    process, seen = launch(cli_args(out), tmp), []
    wait_for_line(process, f"SFT step 4/{STEPS}", seen)
    (victim,) = training_processes(tmp, rank=1)
    os.kill(victim, signal.SIGKILL)
    code, _, rest = finish(process)
    stderr = "".join(seen) + rest
    assert code == 1, stderr
    assert error_lines(stderr) == ["error: training process 1 (of 2) was killed by SIGKILL; the others stopped"]
    assert "resume with" in stderr and "--resume" in stderr and "Traceback" not in stderr
    (kept,) = tmp.glob("lorakit-launch-*")  # a crash keeps every process's log, and says where
    assert str(kept) in stderr and (kept / "rank-1.log").is_file()
    time.sleep(1)
    assert training_processes(tmp) == [], "a training process outlived the launch"

    # 2. resume; Ctrl-C (SIGINT to the command) two steps later stops both processes with a checkpoint
    process, seen = launch(cli_args(out, "--resume"), tmp), []
    wait_for_line(process, "Resuming from checkpoint-", seen)
    first = int(seen[-1].rsplit("-", 1)[1])
    assert first < STEPS - 3, "the kill came too late to test resuming"
    wait_for_line(process, f"SFT step {first + 2}/{STEPS}", seen)
    process.send_signal(signal.SIGINT)
    code, _, rest = finish(process)
    stderr = "".join(seen) + rest
    assert code == 130, stderr
    (line,) = error_lines(stderr)
    assert line.startswith("error: interrupted at step") and "Traceback" not in stderr
    stopped = int(line.split("interrupted at step ")[1].split(";")[0])
    time.sleep(1)
    assert training_processes(tmp) == []

    # 3. resume to the end: the same curve and adapter as the run nobody interrupted
    code, stdout, stderr = run_cli(cli_args(out, "--resume"), tmp)
    assert code == 0, stderr
    assert f"Resuming from checkpoint-{stopped}" in stderr and stopped < STEPS
    assert_same_curve(losses(out), reference)
    assert_same_adapter(out, ddp[0])
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft"]


def test_a_failure_in_the_training_processes_is_one_error_line(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    out = tmp_path / "sft"
    code, _, stderr = run_cli(cli_args(out, "--data", str(bad)), tmp)
    assert code == 1, stderr
    assert error_lines(stderr) == [f"error: {bad} line 2: malformed JSON (Expecting value at column 1)"]
    assert stderr.count("hint:") == 1 and "Traceback" not in stderr and "ChildFailedError" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".sft*")) and not list(tmp.glob("lorakit-launch-*"))


def test_dpo_with_the_reference_adapter_on_two_processes(ddp, tmp, tmp_path):
    """The frozen 'ref' copy of the SFT adapter on both processes: exactly zero rewards before the first update,
    then the curve of one process with the same global batch."""
    from lorakit.train.dpo import run_dpo

    sft = ddp[0]
    shared = ["data.eval=null", "train.logging_steps=1", "train.lr_scheduler_type=constant",
              "train.warmup_ratio=0"]
    old = os.getcwd()
    os.chdir(REPO)
    try:
        one = run_dpo(dpo_recipe(tmp_path / "one", sft, *shared, "train.micro_batch_size=16", max_steps=2)).path
    finally:
        os.chdir(old)
    out = tmp_path / "two"
    args = ["dpo", "--recipe", "recipes/tiny-cpu-dpo.yaml", "--from", str(sft), "-o", str(out), "--max-steps", "2",
            "--num-processes", "2"]
    for assignment in shared:
        args += ["--set", assignment]
    code, _, stderr = run_cli(args, tmp)
    assert code == 0, stderr
    assert "Batch: 16 pairs per optimizer step" in stderr

    def curve(run):
        return [(r["step"], r["loss"], r["rewards/margins"]) for r in read_run(run).metrics if "loss" in r]

    two = curve(out)
    assert two[0][1:] == (pytest.approx(0.693147, abs=1e-6), 0.0)
    assert [step for step, *_ in two] == [1, 2]
    for (_, loss, margin), (_, loss_one, margin_one) in zip(two, curve(one)):
        assert loss == pytest.approx(loss_one, rel=1e-4) and margin == pytest.approx(margin_one, rel=1e-3, abs=1e-6)
