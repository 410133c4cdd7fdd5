"""Bad input to `lorakit sft` and `lorakit data check`: every case fails before training and leaves nothing behind."""

import json
import shutil

import pytest

from ..conftest import REPO
from ..helpers import assert_clean_error, invoke


@pytest.fixture()
def good_data(tmp_path):
    path = tmp_path / "chats.jsonl"
    shutil.copy(REPO / "examples/data/chat-messages.jsonl", path)
    return path


def sft(tmp_path, model, data):
    out = tmp_path / "out"
    result = invoke("sft", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "1")
    assert not out.exists() and not (tmp_path / ".out.partial").exists(), "a failed run left files behind"
    return result


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_data_file(tmp_path, tiny_llama):
    assert_clean_error(sft(tmp_path, tiny_llama, tmp_path / "nope.jsonl"), "nope.jsonl not found")


def test_malformed_json_names_the_line(tmp_path, tiny_llama):
    data = write(tmp_path, "bad.jsonl", '{"text": "ok"}\n{"text": \n')
    assert_clean_error(sft(tmp_path, tiny_llama, data), "bad.jsonl line 2: malformed JSON")


def test_unknown_format(tmp_path, tiny_llama):
    data = write(tmp_path, "odd.jsonl", '{"question": "q", "reply": "a"}\n')
    assert_clean_error(sft(tmp_path, tiny_llama, data), "cannot tell the data format", "data.columns")


def test_missing_and_empty_columns(tmp_path, tiny_llama):
    data = write(tmp_path, "cols.jsonl", '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": ""}\n')
    assert_clean_error(sft(tmp_path, tiny_llama, data), "row 2: 'output' is empty")


def test_empty_dataset(tmp_path, tiny_llama):
    data = write(tmp_path, "empty.jsonl", "")
    assert_clean_error(sft(tmp_path, tiny_llama, data), "empty.jsonl is empty")


def test_model_folder_without_config(tmp_path, good_data):
    folder = tmp_path / "model"
    folder.mkdir()
    assert_clean_error(sft(tmp_path, folder, good_data), "has no config.json")


def test_model_folder_without_weights(tmp_path, good_data, tiny_llama):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    assert_clean_error(sft(tmp_path, folder, good_data), "has no weights")


def test_pickle_only_weights_are_refused(tmp_path, good_data, tiny_llama):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded, never unpickled")
    assert_clean_error(sft(tmp_path, folder, good_data), "only pickle weights", "safetensors")


def test_remote_code_needs_explicit_trust(tmp_path, good_data, tiny_llama):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    assert_clean_error(sft(tmp_path, folder, good_data), "needs its own Python code", "trust_remote_code")


def test_missing_model_folder(tmp_path, good_data):
    assert_clean_error(sft(tmp_path, "./no-such-model", good_data), "model folder ./no-such-model not found")


def test_no_data_at_all(tmp_path, tiny_llama):
    result = invoke("sft", "--model", tiny_llama, "--output-dir", tmp_path / "out")
    assert_clean_error(result, "no training data", "--data")


def test_debug_shows_the_traceback(tmp_path, tiny_llama):
    result = invoke("--debug", "sft", "--model", tiny_llama, "--data", tmp_path / "x.jsonl",
                    "--output-dir", tmp_path / "out")
    assert result.exit_code != 0 and result.exception is not None  # raised, not swallowed


def test_data_check_reports_problems_and_stats(tmp_path):
    result = invoke("data", "check", REPO / "examples/data/chat-messages.jsonl", "--model", "builtin:tiny-llama",
                    "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "messages" and report["rows"] == 50 and report["mask/EOS lint"] == "ok"
    assert report["tokens max"] >= report["tokens p50"] > 0
    dup = write(tmp_path, "dup.jsonl", '{"text": "same"}\n{"text": "same"}\n{"text": "other"}\n')
    report = json.loads(invoke("data", "check", dup, "--json").stdout)
    assert report["exact duplicates"] == 1
    bad = write(tmp_path, "bad.jsonl", '{"messages": [{"role": "user", "content": "q"}]}\n')
    assert_clean_error(invoke("data", "check", bad), "row 1: no assistant turn")


def test_report_to_a_missing_logger(tmp_path, good_data, tiny_llama):
    import importlib.util

    missing = [name for name in ("wandb", "trackio", "tensorboard") if importlib.util.find_spec(name) is None]
    if not missing:
        pytest.skip("every logger lorakit accepts is installed here")
    result = invoke("sft", "--model", tiny_llama, "--data", good_data, "--output-dir", tmp_path / "out",
                    "--set", f"train.report_to=[{missing[0]}]")
    assert_clean_error(result, f"train.report_to lists {missing[0]}, which is not installed")


def test_hub_dataset_offline_says_what_it_tried(tmp_path, tiny_llama):
    result = invoke("sft", "--model", tiny_llama, "--data", "some-org/some-dataset", "--output-dir", tmp_path / "o")
    assert_clean_error(result, "cannot load hub dataset some-org/some-dataset", "hub")


@pytest.mark.slow
def test_chat_keeps_history_and_quits(sft_run):
    from lorakit.cli import app

    from ..helpers import runner

    result = runner.invoke(app, ["chat", str(sft_run.path), "--temperature", "0"],
                           input="What is the capital of France?\n/reset\nWhat is 4 plus 5?\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "The capital of France is Paris." in result.output
    assert "4 plus 5 is 9." in result.output


def test_an_assistant_turn_cut_at_max_length_is_a_counted_warning(tmp_path, tiny_llama):
    long_reply = {"messages": [{"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": " ".join(["word"] * 120)}]}
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    data = write(tmp_path, "long.jsonl", "\n".join(json.dumps(r) for r in (short, long_reply, long_reply)) + "\n")
    result = invoke("data", "check", data, "--model", tiny_llama, "--max-length", "32", "--json")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "2 example(s) are longer than data.max_length=32" in result.output
    assert "long.jsonl" in result.output and "rows 2, 3" in result.output
