"""Outputs never lose work: no overwrite without --force, and --force never replaces an input or a foreign folder."""

import json

import pytest

from lorakit.errors import RunError
from lorakit.io import atomic_dir, check_can_write


def lorakit_output(path, stage="sft"):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"stage": stage}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    return path


def test_existing_output_needs_force(tmp_path):
    run = lorakit_output(tmp_path / "run")
    with pytest.raises(RunError, match="already exists"):
        check_can_write(run, force=False)
    with atomic_dir(run, force=True) as staging:
        (staging / "manifest.json").write_text("{}")
    assert not (run / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("target", ["run", "."])
def test_force_never_replaces_an_input_or_what_holds_it(tmp_path, target):
    run = lorakit_output(tmp_path / "out" / "run")
    out = run if target == "run" else tmp_path / "out"
    (out / "manifest.json").write_text("{}")  # even a folder that looks like an output of ours
    with pytest.raises(RunError, match="which this command reads"):
        with atomic_dir(out, force=True, inputs=[run]):
            pass
    assert (run / "adapter_model.safetensors").read_bytes() == b"weights"


def test_force_replaces_only_folders_lorakit_wrote(tmp_path):
    out = tmp_path / "out"
    lorakit_output(out / "run-a")
    lorakit_output(out / "run-b")
    with pytest.raises(RunError, match="did not write"):
        check_can_write(out, force=True)
    assert (out / "run-a" / "manifest.json").is_file() and (out / "run-b" / "manifest.json").is_file()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.arrow").write_text("x")
    with atomic_dir(cache, force=True, ours_only=False) as staging:  # lorakit's own caches
        (staging / "data.arrow").write_text("y")
    assert (cache / "data.arrow").read_text() == "y"


def test_an_output_under_a_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="afile is a file"):
        check_can_write(tmp_path / "afile" / "sub" / "run", force=False)


def test_resume_says_what_there_is_to_resume(tmp_path):
    from lorakit.outputs import RunFolder

    finished = lorakit_output(tmp_path / "done")
    with pytest.raises(RunError, match="finished run: there is nothing to resume"):
        RunFolder.open(finished, resume=True)
    assert RunFolder.open(tmp_path / "new", resume=True).mode == "fresh"


@pytest.mark.parametrize("target", ["", ".", "./", "..", "sub/..", "/"])
def test_paths_that_name_no_folder_are_refused_before_anything_moves(tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(RunError, match="names no folder"):
        with atomic_dir(target, force=True, ours_only=False):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_the_current_folder_and_its_parents_are_never_outputs(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for target in (work, tmp_path / "a"):
        with pytest.raises(RunError, match="current folder"):
            check_can_write(target, force=True, ours_only=False)


def test_a_folder_that_cannot_be_created_is_refused_up_front():
    with pytest.raises(RunError, match="cannot be created"):
        check_can_write(__import__("pathlib").Path("/proc/lorakit-test/run"), force=False)


def test_a_failed_resume_puts_back_what_it_rewrote(tmp_path):
    from lorakit.outputs import RunFolder, SFTManifest

    run = RunFolder(tmp_path / "run")
    checkpoint = run.staging / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    (checkpoint / "lorakit-complete").write_text("4\n")
    for name, text in (("lorakit.yaml", "stage: sft\n"), ("manifest.json", '{"status": "running"}'),
                       ("metrics.jsonl", '{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 0.9}\n')):
        (run.staging / name).write_text(text)
    before = {p.name: p.read_bytes() for p in run.staging.iterdir() if p.is_file()}
    run.mode, run._resume_step = "resume", 4
    run.begin()
    run.write_recipe(__import__("lorakit.config", fromlist=["load_recipe"]).load_recipe("sft"))
    run.write_manifest(SFTManifest(status="running", started_at="later"))
    run.trim_metrics(4)
    run.abandon()  # failed before saving a new checkpoint
    assert {p.name: p.read_bytes() for p in run.staging.iterdir() if p.is_file()} == before


def test_resume_skips_a_checkpoint_the_trainer_did_not_finish_saving(tmp_path):
    from lorakit.outputs import RunFolder

    run = RunFolder(tmp_path / "run")
    for step, complete in ((2, True), (4, False)):
        checkpoint = run.checkpoints / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        if complete:
            (checkpoint / "lorakit-complete").write_text(f"{step}\n")
    assert run.latest_step() == 2
    assert [p.name for p in run.incomplete_checkpoints()] == ["checkpoint-4"]


def test_metrics_cut_by_a_crash_lose_only_their_last_line(tmp_path):
    from lorakit.outputs import read_metrics

    file = tmp_path / "metrics.jsonl"
    file.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(file, torn_tail_ok=True) == [{"step": 1, "loss": 2.0}]
    with pytest.raises(RunError, match="metrics.jsonl line 2: malformed JSON"):
        read_metrics(file)


def test_staging_left_by_a_killed_command_is_collected_but_a_live_one_is_not(tmp_path):
    import os
    import subprocess
    import sys

    target = tmp_path / "merged"
    abandoned = tmp_path / ".merged.tmp-dead"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_text("half")
    live = tmp_path / ".merged.tmp-live"
    live.mkdir()
    # a live writer: another process holding the lock the way atomic_dir does
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
                               " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(live)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with atomic_dir(target) as staging:
            (staging / "manifest.json").write_text("{}")
        assert not abandoned.exists() and live.is_dir() and (target / "manifest.json").is_file()
    finally:
        holder.kill()
        holder.wait()
    os.rmdir(live)


# ---------------------------------------------------------------------------------------------------------------
# What lands on disk is readable by a server under another user


def test_outputs_are_written_0644_and_0755(tmp_path):
    import os
    import stat

    import numpy as np
    from safetensors.numpy import save_file

    from lorakit.io import write_json_atomic

    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "merged", ours_only=False) as staging:
            save_file({"w": np.zeros((2, 2), np.float32)}, str(staging / "model.safetensors"))  # 0600 on its own
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "private.json").write_text("{}")
            os.chmod(staging / "sub" / "private.json", 0o600)
            write_json_atomic(staging / "manifest.json", {"stage": "merge"})
        write_json_atomic(tmp_path / "eval.json", {})
    finally:
        os.umask(mask)
    merged = tmp_path / "merged"
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [merged, *merged.rglob("*"), tmp_path / "eval.json"]}
    assert modes == {"merged": 0o755, "merged/model.safetensors": 0o644, "merged/sub": 0o755,
                     "merged/sub/private.json": 0o644, "merged/manifest.json": 0o644, "eval.json": 0o644}


# ---------------------------------------------------------------------------------------------------------------
# One writer per output (the CLI-level tests with real training are in tests/integration/test_one_writer.py)

HOLDER = ("import sys, time; from lorakit.outputs import hold_output\n"
          "with hold_output(sys.argv[1], 'lorakit sft'):\n    print('held', flush=True); time.sleep(120)")


def hold_in_another_process(path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_first_until_it_dies(tmp_path):
    from lorakit.outputs import OutputBusy, check_not_being_written, hold_output, writer_of

    target = tmp_path / "out" / "run"
    holder = hold_in_another_process(target)
    try:
        with pytest.raises(OutputBusy, match=rf"{target} is being written by pid {holder.pid} since .* \(lorakit sft\)"):
            with hold_output(target):
                pass
        assert writer_of(target).pid == holder.pid
        with pytest.raises(RunError, match="not finished yet"):
            check_not_being_written(target)
    finally:
        holder.kill()  # SIGKILL: nothing cleans up; the kernel releases the lock
        holder.wait()
    assert (tmp_path / "out" / ".run.lock").exists() and writer_of(target) is None
    with hold_output(target, "lorakit sft"):
        with hold_output(target):  # the same process again (quantize holding the merge it asks for): re-entrant
            assert writer_of(target) is None
    assert not (tmp_path / "out" / ".run.lock").exists()


def test_a_lock_leaves_no_folder_it_had_to_create(tmp_path):
    from lorakit.outputs import hold_output

    with hold_output(tmp_path / "a" / "b" / "run"):
        assert (tmp_path / "a" / "b" / ".run.lock").is_file()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        with hold_output(tmp_path / "c" / "run"):
            raise RuntimeError("the command failed")
    assert list(tmp_path.iterdir()) == []
