"""What a server needs is in the folders lorakit writes: stop tokens, a base it can find, the commands that serve it;
the servability warning before training; export-base for built-in bases."""

import json
import os

import pytest

from lorakit.export.serve_info import serve_info

from ..conftest import REPO
from ..helpers import assert_clean_error, invoke


def test_export_base_writes_the_cached_build_anywhere(tmp_path):
    from lorakit.tiny import resolve_builtin

    result = invoke("export-base", "builtin:tiny-llama", tmp_path / "base", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"base": "builtin:tiny-llama", "output": str(tmp_path / "base")}
    built = resolve_builtin("builtin:tiny-llama")
    for file in built.iterdir():
        assert (tmp_path / "base" / file.name).read_bytes() == file.read_bytes(), file.name
    manifest = json.loads((tmp_path / "base" / "manifest.json").read_text())
    assert manifest["stage"] == "base" and manifest["name"] == "builtin:tiny-llama"

    assert_clean_error(invoke("export-base", "builtin:tiny-llama", tmp_path / "base"), "already exists", "--force")
    assert invoke("export-base", "builtin:tiny-llama", tmp_path / "base", "--force").exit_code == 0
    assert_clean_error(invoke("export-base", "builtin:nope", tmp_path / "x"), "unknown built-in model",
                       leftover=tmp_path / "x")
    assert_clean_error(invoke("export-base", "org/model", tmp_path / "x"), "neither a built-in model",
                       leftover=tmp_path / "x")
    assert_clean_error(invoke("serve-info", tmp_path / "base"), "base model lorakit exported", "--base")


def test_adapter_run_carries_what_a_server_needs(sft_run, tmp_path):
    from transformers import AutoTokenizer

    from lorakit.chat_template import end_of_turn_token

    run = sft_run.path
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    eot = end_of_turn_token(tokenizer)[0]
    generation = json.loads((run / "generation_config.json").read_text())
    # the end-of-turn token first (what a server reports as the stop reason), the base's EOS kept beside it
    assert generation["eos_token_id"] == [eot, tokenizer.eos_token_id]
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert os.path.isfile(os.path.join(adapter["base_model_name_or_path"], "config.json"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["warnings"] == [] and "warnings" not in sft_run.summary
    card = (run / "README.md").read_text()
    assert "## Serve" in card and f"--lora-modules {run.name}={run.resolve()}" in card
    assert f"--generation-config {run.resolve()}" in card

    # the run's base moved elsewhere: export-base, then --base
    assert invoke("export-base", run, tmp_path / "base").exit_code == 0
    info = serve_info([run], base=str(tmp_path / "base"))
    assert info["vllm"]["argv"][info["vllm"]["argv"].index("--model") + 1] == str((tmp_path / "base").resolve())


def test_serve_info_transformers_code_runs_and_stops_at_the_end_of_turn(sft_run):
    """The snippet serve-info prints, executed as printed (with a prompt the tiny model was trained on)."""
    from transformers import AutoTokenizer

    from lorakit.chat_template import end_of_turn_token

    code = serve_info([sft_run.path])["transformers"]["code"]
    code = code.replace("Hello!", "What is the capital of France?")
    namespace = {}
    exec(compile(code, "serve-info", "exec"), namespace)  # noqa: S102 - lorakit's own printed snippet
    new = namespace["out"][0, namespace["inputs"]["input_ids"].shape[1]:].tolist()
    eot = end_of_turn_token(AutoTokenizer.from_pretrained(str(sft_run.path)))[0]
    assert len(new) < 128 and new[-1] == eot, new


@pytest.mark.slow
@pytest.mark.parametrize("override,fragment", [("lora.r=24", "--max-lora-rank 32"),
                                               ("lora.use_dora=true", "DoRA")])
def test_servability_warning_before_training_and_in_the_summary(tmp_path, override, fragment, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    result = invoke("sft", "-r", REPO / "recipes/tiny-cpu-sft.yaml", "-o", out, "--max-steps", "1",
                    "--set", override, "--set", "data.max_rows=8", "--json")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: vLLM")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    # printed before the model loaded
    assert result.stderr.index(lines[0]) < result.stderr.index("Model:")
    summary = json.loads(result.stdout)
    assert len(summary["warnings"]) == 1 and fragment in summary["warnings"][0]
    assert json.loads((out / "manifest.json").read_text())["warnings"] == summary["warnings"]
    assert fragment in (out / "README.md").read_text()


def test_merged_and_exported_folders_say_how_to_serve_them(tmp_path, sft_run):
    from lorakit.export.merge import merge_run
    from lorakit.export.quantize import run_quantize

    merged = merge_run(sft_run.path, tmp_path / "merged").path
    card = (merged / "README.md").read_text()
    assert "## Serve" in card and f"--model {merged.resolve()}" in card
    export = run_quantize(merged, "gguf", "q8_0", tmp_path / "export")
    manifest = json.loads((export.path / "manifest.json").read_text())
    expected = ["transformers"] + (["llama.cpp"] if manifest["verification"].get("llama_cpp") else [])
    assert manifest["verified_runtimes"] == expected == export.summary["verified_runtimes"]
    readme = (export.path / "README.md").read_text()
    assert f"llama-server -m {export.path.resolve() / 'model-q8_0.gguf'}" in readme
    assert "vllm-gguf-plugin" in readme and "ollama create" in readme
    assert ", ".join(expected) in readme

