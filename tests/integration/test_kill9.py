"""Crash safety: SIGKILL (kill -9, the out-of-memory killer) at chosen and at seeded random points of sft, dpo,
merge, quantize and run leaves either the previous complete state or a resumable checkpoint, never a folder a later
command takes for complete; and --resume after SIGKILL continues the same loss curve.

Each killed command runs in a subprocess (tests/integration/kill_driver.py) that kills itself at the chosen point,
so nothing gets a chance to clean up; what the next command then finds on disk is what a real crash leaves.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lorakit.outputs import manifest_json as read_manifest
from lorakit.outputs import read_run
from lorakit.train.sft import run_sft

from ..conftest import EXAMPLES, REPO
from ..helpers import invoke

pytestmark = pytest.mark.slow

STEPS = 8
SEED = 19


def lorakit_killed(cwd: Path, argv: list, kill: dict | None = None, delay: float | None = None):
    """Run `lorakit ARGV` in a subprocess that SIGKILLs itself at `kill` (or is killed after `delay` seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tests.integration.kill_driver", json.dumps({"argv": argv, "kill": kill})]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    if delay is not None:
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=900)
    return process.returncode, output


def losses(path: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, open(path / "metrics.jsonl")) if "loss" in m}


def assert_visible_outputs_complete(folder: Path) -> None:
    """Every folder a later command would take as an output (a name without a leading dot) is a complete one."""
    for child in folder.iterdir():
        if child.name.startswith(".") or not child.is_dir() or not (child / "manifest.json").exists():
            continue
        manifest = read_manifest(child)
        assert manifest.get("status") == "complete", f"{child} is visible but not complete"
        if manifest.get("stage") in ("sft", "dpo"):
            read_run(child)  # every file whole
        else:
            names = manifest.get("files") or ["config.json"]
            assert all((child / name).is_file() for name in names), f"{child} misses files"


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    """A recipe for a short SFT run (checkpoint every 2 steps, loss logged every step) and that run done straight."""
    root = tmp_path_factory.mktemp("kill9")
    data = root / "chats.jsonl"
    shutil.copy(EXAMPLES / "chat-messages.jsonl", data)
    recipe = {
        "stage": "sft", "output_dir": "out", "model": {"name_or_path": str(tiny_llama)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(data), "max_rows": 16, "max_length": 64},
        "train": {"max_steps": STEPS, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                  "learning_rate": 3.0e-3, "logging_steps": 1, "save_steps": 2, "save_total_limit": 3,
                  "gradient_checkpointing": False},
        "preflight": False,
    }
    (root / "sft.yaml").write_text(yaml.safe_dump(recipe))
    prefs = root / "prefs.jsonl"
    shutil.copy(EXAMPLES / "prefs.jsonl", prefs)
    result = invoke("sft", "-r", root / "sft.yaml", "-o", root / "straight")
    assert result.exit_code == 0, result.output
    return root


def sft_recipe(setup: Path, out: Path):
    from lorakit.config import load_recipe

    return load_recipe("sft", setup / "sft.yaml", [], {"output_dir": str(out)})


def resume_and_compare(setup: Path, out: Path) -> None:
    resumed = run_sft(sft_recipe(setup, out), resume=True)
    expected, got = losses(setup / "straight"), losses(resumed.path)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))  # every step logged once
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), f"step {step}"


def test_sft_killed_between_steps_resumes_the_same_curve(setup, tmp_path):
    code, output = lorakit_killed(tmp_path, ["sft", "-r", str(setup / "sft.yaml")], {"at": "step", "step": 5})
    assert code == -signal.SIGKILL, output
    staging = tmp_path / ".out.partial"
    assert not (tmp_path / "out").exists() and (staging / "checkpoints" / "checkpoint-4").is_dir()
    assert_visible_outputs_complete(tmp_path)
    # nothing takes the interrupted run for a finished one
    merge = invoke("merge", tmp_path / "out")
    assert merge.exit_code != 0 and "did not finish" in merge.output
    again = invoke("sft", "-r", setup / "sft.yaml", "-o", tmp_path / "out")
    assert again.exit_code != 0 and "--resume" in again.output
    resume_and_compare(setup, tmp_path / "out")


def test_sft_killed_while_saving_a_checkpoint_resumes_from_the_one_before(setup, tmp_path):
    code, output = lorakit_killed(tmp_path, ["sft", "-r", str(setup / "sft.yaml")],
                                  {"at": "save", "step": 6, "file": "scheduler.pt"})
    assert code == -signal.SIGKILL, output
    checkpoints = tmp_path / ".out.partial" / "checkpoints"
    assert (checkpoints / "checkpoint-6" / "scheduler.pt").is_file()  # half written, not marked complete
    from lorakit.outputs import RunFolder

    assert RunFolder(tmp_path / "out").latest_step() == 4
    resume_and_compare(setup, tmp_path / "out")


def test_sft_killed_while_replacing_a_finished_run(setup, tmp_path):
    """--force over a finished run, killed between moving the old run aside and the new one in: no run at the
    path (never half of one), the new one waits complete in staging and --resume puts it in place."""
    shutil.copytree(setup / "straight", tmp_path / "out")
    code, output = lorakit_killed(tmp_path, ["sft", "-r", str(setup / "sft.yaml"), "--force"],
                                  {"at": "replace", "name": "x"})
    assert code == -signal.SIGKILL, output
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.partial").is_dir()
    assert_visible_outputs_complete(tmp_path)
    resume_and_compare(setup, tmp_path / "out")
    assert not list(tmp_path.glob(".out.old-*")), "the replaced run's copy was not cleaned up"


def test_dpo_killed_between_steps_resumes_the_same_curve(setup, tmp_path):
    parent = setup / "straight"
    argv = ["dpo", "--from", str(parent), "--data", str(setup / "prefs.jsonl"), "--max-steps", "6", "--set",
            "train.logging_steps=1", "--set", "train.save_steps=2", "--set", "train.micro_batch_size=4",
            "--set", "train.gradient_accumulation_steps=1", "--set", "data.max_rows=16", "--no-preflight"]
    straight = invoke(*argv, "-o", tmp_path / "dpo-straight")
    assert straight.exit_code == 0, straight.output
    code, output = lorakit_killed(tmp_path, [*argv, "-o", "dpo"], {"at": "step", "step": 3})
    assert code == -signal.SIGKILL, output
    assert not (tmp_path / "dpo").exists() and (tmp_path / ".dpo.partial" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = invoke(*argv, "-o", tmp_path / "dpo", "--resume")
    assert resumed.exit_code == 0, resumed.output
    expected, got = losses(tmp_path / "dpo-straight"), losses(tmp_path / "dpo")
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4, abs=1e-6), f"step {step}"


def seeded_delays(name: str, n: int, low: float, high: float) -> list[float]:
    rng = random.Random(f"{SEED}:{name}")
    return [round(rng.uniform(low, high), 2) for _ in range(n)]


def test_merge_killed_anywhere_leaves_no_half_model(setup, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(setup / "straight", run)
    target = tmp_path / "run-merged"
    started = time.time()
    assert invoke("merge", run).exit_code == 0  # a complete merge already there: --force replaces it below
    took = time.time() - started
    points = [{"at": "call", "target": "lorakit.export.merge.write_shards", "when": "after"},
              {"at": "replace", "name": "x"}]
    # and at seeded random instants over a subprocess's whole life (imports included)
    delays = seeded_delays("merge", 1, 2.0, 8.0 + 2 * took)
    for kill in points + [None] * len(delays):
        code, output = lorakit_killed(tmp_path, ["merge", "run", "--force"], kill,
                                      delay=delays.pop() if kill is None else None)
        if kill is not None:
            assert code == -signal.SIGKILL, output
        assert_visible_outputs_complete(tmp_path)
        if target.exists():
            assert read_manifest(target)["status"] == "complete"
        # the next merge works, and leaves no abandoned staging folder
        again = invoke("merge", run, "--force")
        assert again.exit_code == 0, again.output
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((".run-merged.tmp-", ".run-merged.old-"))]


def test_quantize_killed_anywhere_leaves_no_half_export(setup, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(setup / "straight", run)
    assert invoke("merge", run).exit_code == 0
    export = tmp_path / "run-merged-gguf"
    for kill, delay in [({"at": "call", "target": "lorakit.export.quantize._write_gguf", "when": "after"}, None),
                        (None, seeded_delays("quantize", 1, 3.0, 12.0)[0])]:
        code, output = lorakit_killed(tmp_path, ["quantize", "run-merged", "--type", "q8_0", "--force"], kill, delay)
        if kill is not None:
            assert code == -signal.SIGKILL, output
        assert_visible_outputs_complete(tmp_path)
        again = invoke("quantize", tmp_path / "run-merged", "--type", "q8_0", "--force")
        assert again.exit_code == 0, again.output
        assert read_manifest(export)["status"] == "complete"


def pipeline_yaml(setup: Path, root: Path, stages: str) -> Path:
    sft = yaml.safe_load((setup / "sft.yaml").read_text())
    sft.pop("stage")
    sft.pop("output_dir")
    recipe = {"stage": "pipeline", "root": str(root), "stages": yaml.safe_load(stages), "sft": sft}
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_killed_in_a_stage_resumes_and_skips_what_is_done(setup, tmp_path):
    recipe = pipeline_yaml(setup, tmp_path / "p", "[sft, merge]")
    code, output = lorakit_killed(tmp_path, ["run", str(recipe)], {"at": "step", "step": 5})
    assert code == -signal.SIGKILL, output
    assert_visible_outputs_complete(tmp_path / "p")
    # killed again, now in the merge stage, after the SFT stage finished
    code, output = lorakit_killed(tmp_path, ["run", str(recipe)],
                                  {"at": "call", "target": "lorakit.export.merge.write_shards", "when": "after"})
    assert code == -signal.SIGKILL, output
    assert_visible_outputs_complete(tmp_path / "p")
    for step, loss in losses(setup / "straight").items():
        assert losses(tmp_path / "p" / "sft")[step] == pytest.approx(loss, rel=1e-4), f"step {step}"
    finished = invoke("run", recipe, "--json")
    assert finished.exit_code == 0, finished.output
    stages = {s["stage"]: s["status"] for s in json.loads(finished.stdout)["stages"]}
    assert stages == {"sft": "skipped", "merge": "ran"}
    assert_visible_outputs_complete(tmp_path / "p")
