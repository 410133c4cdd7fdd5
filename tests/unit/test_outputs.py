"""Outputs never lose work: no overwrite without --force, and --force never replaces an input or a foreign folder."""

import json

import pytest

from lorakit.errors import RunError
from lorakit.runs import atomic_dir, check_can_write


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
    from lorakit.runs import RunFolder

    finished = lorakit_output(tmp_path / "done")
    with pytest.raises(RunError, match="finished run: there is nothing to resume"):
        RunFolder.open(finished, resume=True)
    assert RunFolder.open(tmp_path / "new", resume=True).mode == "fresh"
