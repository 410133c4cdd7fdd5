"""One writer per output: while a command writes an output, a second one that would write it is refused at once,
naming the live holder (--force included); a command that reads it refuses it; kill -9 of the holder leaves nothing
stuck, and --resume continues. Each holder is a real `lorakit` process paused mid-training
(tests/integration/kill_driver.py), so the lock is taken and released by the kernel as in use."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lorakit.outputs import read_run

from ..conftest import EXAMPLES, REPO
from ..fuzz.workspace import fingerprint
from ..helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow
STEPS = 4

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "HF_HUB_OFFLINE": "1"}


def paused_lorakit(cwd: Path, argv: list, step: int, until: Path) -> subprocess.Popen:
    """`lorakit ARGV` in its own process, paused right after optimizer step `step` until `until` exists."""
    spec = {"argv": argv, "kill": {"at": "pause", "step": step, "until": str(until)}}
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.kill_driver", json.dumps(spec)], cwd=cwd,
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = Path(f"{until}.paused")
    deadline = time.time() + 600
    while not marker.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"the first command did not reach step {step}:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    return process


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    """A recipe for a 4-step SFT run on the tiny model, checkpointed every 2 steps."""
    root = tmp_path_factory.mktemp("one-writer")
    shutil.copy(EXAMPLES / "chat-messages.jsonl", root / "chats.jsonl")
    (root / "sft.yaml").write_text(yaml.safe_dump({
        "stage": "sft", "output_dir": "out", "model": {"name_or_path": str(tiny_llama)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(root / "chats.jsonl"), "max_rows": 8, "max_length": 64},
        "train": {"max_steps": STEPS, "micro_batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1,
                  "save_steps": 2, "gradient_checkpointing": False},
        "preflight": False}))
    return root


def test_a_second_writer_is_refused_and_a_killed_one_leaves_nothing_stuck(setup, tmp_path):
    recipe, out = setup / "sft.yaml", tmp_path / "out"
    first = paused_lorakit(tmp_path, ["sft", "-r", str(recipe), "-o", str(out)], 3, tmp_path / "go")
    try:
        staging = tmp_path / ".out.partial"
        before = fingerprint(staging)
        # a second launch of the same command, in a process of its own (a second terminal, a retrying scheduler)
        second = subprocess.run([sys.executable, "-m", "lorakit", "sft", "-r", str(recipe), "-o", str(out)],
                                cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        assert second.returncode != 0, second.stderr
        assert f"{out} is being written by pid {first.pid} since " in second.stderr, second.stderr
        # following the hint of an interrupted run is refused too: --force never takes a live run's staging
        for extra in (["--force"], ["--resume"]):
            assert_clean_error(invoke("sft", "-r", recipe, "-o", out, *extra), f"being written by pid {first.pid}")
        # a command that reads the run refuses it while it is written
        assert_clean_error(invoke("merge", out), f"{out} is being written by pid {first.pid}", "not finished")
        assert_clean_error(invoke("serve-info", out), "is being written")
        assert fingerprint(staging) == before
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9: the kernel releases the lock, the lock file stays
        first.wait()
    assert (tmp_path / ".out.lock").exists()
    resumed = invoke("sft", "-r", recipe, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert read_run(out).manifest.summary["steps"] == STEPS
    assert not (tmp_path / ".out.lock").exists()  # released and removed by the command that held it


def test_two_pipelines_on_one_root(setup, tmp_path):
    sft = yaml.safe_load((setup / "sft.yaml").read_text())
    sft.pop("stage")
    sft.pop("output_dir")
    root = tmp_path / "p"
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(yaml.safe_dump({"stage": "pipeline", "root": str(root), "stages": ["sft"], "sft": sft}))
    first = paused_lorakit(tmp_path, ["run", str(recipe)], 3, tmp_path / "go")
    try:
        before = fingerprint(root)
        assert_clean_error(invoke("run", recipe), f"{root} is being written by pid {first.pid}", "lorakit run")
        assert_clean_error(invoke("run", recipe, "--force"), f"{root} is being written by pid {first.pid}")
        assert fingerprint(root) == before
    finally:
        (tmp_path / "go").touch()
        output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    again = invoke("run", recipe, "--json")
    assert again.exit_code == 0, again.output
    assert [s["status"] for s in json.loads(again.stdout)["stages"]] == ["skipped"]
    assert not [f.name for folder in (tmp_path, root) for f in folder.iterdir() if f.name.endswith(".lock")]
