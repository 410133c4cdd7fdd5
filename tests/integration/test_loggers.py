"""train.report_to, offline: TensorBoard event files, wandb in offline mode (and a clean error without it), trackio's
local database. Each test skips when its logger is not installed (`make test-loggers` installs wandb and trackio)."""

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from ..conftest import REPO
from ..helpers import assert_clean_error, invoke

pytestmark = pytest.mark.slow


def needs(name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed: pip install 'lorakit[{name}]' (or make test-loggers)")
    if name == "wandb":
        import wandb

        # wandb keeps its settings (offline mode, credentials) for the whole process: start each test from scratch
        wandb.teardown()


def train(tmp_path, logger, *extra):
    out = tmp_path / "run"
    result = invoke("sft", "-r", REPO / "recipes/tiny-cpu-sft.yaml", "-o", out, "--max-steps", "4",
                    "--set", f"train.report_to={logger}", "--set", "train.logging_steps=2", *extra)
    return out, result


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_tensorboard_writes_the_losses(tmp_path):
    needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, result = train(tmp_path, "tensorboard")
    assert result.exit_code == 0, result.output
    events = list((out / "checkpoints" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no event file"
    scalars = EventAccumulator(str(events[0].parent)).Reload()
    losses = [e.value for e in scalars.Scalars("train/loss")]
    logged = [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert losses == pytest.approx(logged, rel=1e-5)


def test_wandb_offline_logs_each_run_without_network(tmp_path, monkeypatch):
    needs("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("first", "second"):  # one process, like sft then dpo in `lorakit run`
        _, result = train(tmp_path / name, "wandb")
        assert result.exit_code == 0, result.output
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    # transformers leaves a wandb run open after training; lorakit closes it, or the second would log into the first
    assert len(runs) == 2 and all(run.stat().st_size > 0 for run in runs)


def test_wandb_without_an_account_or_offline_mode_is_a_clean_error(tmp_path, monkeypatch):
    needs("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no saved login
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    out, result = train(tmp_path, "wandb")
    assert_clean_error(result, "train.report_to wandb", "WANDB_MODE=offline")
    assert not out.exists() and not (tmp_path / ".run.partial").exists()


def test_trackio_logs_to_its_local_database(tmp_path):
    needs("trackio")
    # trackio reads TRACKIO_DIR once, when it is first imported: a process of its own
    out = tmp_path / "run"
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    done = subprocess.run([sys.executable, "-m", "lorakit", "sft", "-r", "recipes/tiny-cpu-sft.yaml", "-o", str(out),
                           "--max-steps", "4", "--set", "train.report_to=trackio", "--set", "train.logging_steps=2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(tmp_path / "trackio" / "lorakit.db") as db:
        rows = [json.loads(blob) for (blob,) in db.execute("select metrics from metrics where run_name = 'run'")]
    assert [r["train/loss"] for r in rows if "train/loss" in r][:1] == pytest.approx(
        [json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]])
