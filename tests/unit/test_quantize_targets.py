"""quantize targets: their one spelling (flag, recipe, folder name), and the inputs refused before any work."""

import json
import shutil

import pytest

from lorakit.config import QuantizeSection
from lorakit.errors import ConfigError
from lorakit.export.targets import make_target, parse_target, requested_targets, target_folders
from lorakit.vram.catalog import find_model
from lorakit.vram.estimate import Setup, estimate

from ..helpers import assert_clean_error, invoke


@pytest.mark.parametrize("label, fmt, kind, method", [
    ("gguf-q8_0", "gguf", "q8_0", None), ("gguf-Q4_K_M", "gguf", "q4_k_m", None), ("bnb-4bit", "bnb-4bit", None, None),
    ("w4a16", "w4a16", None, "rtn"), ("w4a16-gptq", "w4a16", None, "gptq"), ("w4a16-awq", "w4a16", None, "awq"),
    ("w8a8-rtn", "w8a8", None, "rtn"), ("fp8", "fp8", None, "dynamic"), ("fp8-dynamic", "fp8", None, "dynamic")])
def test_labels_parse_and_name_their_folder(tmp_path, label, fmt, kind, method):
    target = parse_target(label)
    assert (target.format, target.type, target.method) == (fmt, kind, method)
    assert parse_target(target.label) == target  # the label round-trips
    assert target_folders(tmp_path / "run-merged", [target], None) == [tmp_path / f"run-merged-{target.label}"]


def test_flags_and_labels_name_the_same_targets(tmp_path):
    assert make_target("gguf") == parse_target("gguf-q8_0")
    assert make_target("fp8", method="rtn") == parse_target("fp8-dynamic")  # FP8 weights are rounded to nearest
    several = requested_targets(["gguf-q8_0", "gguf-q4_k_m", "w4a16", "w4a16-rtn"], None, None, None)
    assert [t.label for t in several] == ["gguf-q8_0", "gguf-q4_k_m", "w4a16-rtn"]  # one folder per target
    assert target_folders(tmp_path / "m", several, tmp_path / "out") == [tmp_path / "out" / t.label for t in several]
    assert target_folders(tmp_path / "m", several[:1], tmp_path / "out") == [tmp_path / "out"]
    assert requested_targets(None, "gguf", "q8_0,q4_k_m", None) == several[:2]


@pytest.mark.parametrize("args, fragment", [
    ((None, "awq", None, None), "is a method now"), ((None, "w4a16", "q4_0", None), "is a GGUF type"),
    ((None, "gguf", None, "gptq"), "does not apply to GGUF"), ((None, "fp8", None, "gptq"), "does not apply to fp8"),
    ((None, "w8a8", None, "awq"), "does not apply to w8a8"), ((["w4a16"], "gguf", None, None), "does not combine"),
    ((["w5a16"], None, None, None), "not a quantize target"), ((["gguf-q3"], None, None, None), "unknown GGUF type")])
def test_impossible_targets_are_named(args, fragment):
    with pytest.raises(ConfigError, match=fragment):
        requested_targets(*args)


def test_recipe_section_lists_targets_or_one_format():
    assert [t.label for t in QuantizeSection(targets=["gguf-q8_0", "w4a16-gptq"]).resolved_targets()] == \
        ["gguf-q8_0", "w4a16-gptq"]
    assert QuantizeSection().resolved_targets()[0].label == "gguf-q8_0"  # the old single form, unchanged
    assert QuantizeSection(format="fp8").resolved_targets()[0].label == "fp8-dynamic"
    for bad in (dict(targets=["gguf-q8_0"], format="w8a8"), dict(targets=["nope"]), dict(format="w4a16", type="q4_0"),
                dict(format="gguf", method="gptq"), dict(calibration_rows=4)):
        with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
            QuantizeSection(**bad)


def test_vram_estimate_covers_the_served_formats():
    shape = find_model("Llama-3.1-8B")
    weights = {q: estimate(shape, Setup(stage="inference", quant=q, seq_len=1024)).term("base_weights")
               for q in ("w4a16", "w8a8", "fp8", "int8", "nf4")}
    params = shape.quantizable_params
    assert weights["w4a16"] == pytest.approx(params * (0.5 + 2 / 128))  # int4 + one 16-bit scale per 128
    assert weights["w8a8"] == weights["fp8"] == pytest.approx(params, rel=0.01)
    assert weights["w4a16"] < weights["nf4"] * 1.01 and weights["w8a8"] < weights["w4a16"] * 2.1
    result = invoke("vram-estimate", "Llama-3.1-8B", "--stage", "inference", "--quant", "fp8", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["setup"]["quant"] == "fp8"
    assert_clean_error(invoke("vram-estimate", "Llama-3.1-8B", "--quant", "w4a16"), "deploy format", code=2)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """A tiny model whose MLP width (100) neither INT8/FP8 kernels (multiples of 16) nor W4A16 groups (32) take."""
    from lorakit.tiny import TinySpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("odd") / "odd", TinySpec(intermediate_size=100))


@pytest.mark.parametrize("fmt, fragment", [("fp8", "multiples of 16"), ("w8a8", "multiples of 16"),
                                           ("w4a16", "group size")])
def test_shapes_the_kernels_cannot_take_are_refused_before_work(odd_model, tmp_path, fmt, fragment):
    out = tmp_path / "out"
    assert_clean_error(invoke("quantize", odd_model, "--format", fmt, "-o", out), fragment, "mlp.",
                       leftover=out)


def test_a_mixed_command_checks_every_target_before_it_writes_any(odd_model, tmp_path):
    # the GGUF target is fine and comes first; the FP8 one cannot take the MLP's shapes: nothing at all is written
    out = tmp_path / "out"
    assert_clean_error(invoke("quantize", odd_model, "--target", "gguf-q8_0", "--target", "fp8-dynamic", "-o", out),
                       "multiples of 16", leftover=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_damaged_or_quantized_sources_and_thin_calibration_data_are_refused(tiny_llama, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_llama, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_clean_error(invoke("quantize", damaged, "--format", "w8a8", "-o", tmp_path / "a"), "damaged",
                       leftover=tmp_path / "a")
    quantized = tmp_path / "quantized"
    shutil.copytree(tiny_llama, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (quantized / "config.json").write_text(json.dumps(config))
    assert_clean_error(invoke("quantize", quantized, "--format", "fp8", "-o", tmp_path / "b"), "already quantized",
                       leftover=tmp_path / "b")
    # six chats are too few for GPTQ's Hessians: refused before llm-compressor's environment is even looked at
    thin = "examples/data/chat-messages-test.jsonl"
    assert_clean_error(invoke("quantize", tiny_llama, "--format", "w8a8", "--method", "gptq", "--calibration-data",
                              thin, "-o", tmp_path / "c"), "usable row", "at least 16", leftover=tmp_path / "c")
    # a model with no run behind it has no training data to calibrate on
    assert_clean_error(invoke("quantize", tiny_llama, "--target", "w8a8-gptq", "-o", tmp_path / "d"),
                       "--calibration-data", leftover=tmp_path / "d")
    assert_clean_error(invoke("quantize", tiny_llama, "--format", "awq"), "--method awq", code=2)


def test_serve_info_gives_vllm_serve_without_a_quantization_flag_and_the_gpus(tmp_path):
    import torch
    from safetensors.torch import save_file

    from lorakit.export.serve_info import serve_info

    folder = tmp_path / "merged-fp8-dynamic"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "compressed-tensors"}}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    (folder / "manifest.json").write_text(json.dumps({
        "stage": "quantize", "status": "complete", "source": str(tmp_path / "merged"), "target": "fp8-dynamic",
        "format": "fp8", "files": ["model.safetensors"], "verified_runtimes": ["transformers"]}))
    info = serve_info([folder])
    assert info["artifact"]["kind"] == "compressed-tensors" and info["artifact"]["eos_token_id"] == [2, 5]
    vllm = info["vllm"]
    assert vllm["command"].startswith(f"vllm serve {folder.resolve()} --served-model-name merged-fp8-dynamic")
    assert "--quantization" not in vllm["argv"]
    assert "compute capability >= 8.9" in vllm["notes"][0]
    assert vllm["cpu"]["argv"][:4] == ["python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert vllm["cpu"]["extra_argv"] == ["--dtype", "bfloat16", "--enforce-eager"]
    assert not info["llama.cpp"]["supported"] and "--format gguf" in info["llama.cpp"]["notes"][0]
    assert "compressed-tensors" in info["transformers"]["code"]
    shown = invoke("serve-info", folder)
    assert shown.exit_code == 0 and "vllm serve" in shown.output


def test_llama_cpps_own_arithmetic_has_a_floor_a_broken_gguf_does_not_pass():
    from lorakit.export.gguf_verify import LLAMA_CPP_KL_FLOOR, problems

    tokens = {"texts": 4, "mismatches": 0}

    def figures(cpp_kl, judge="transformers", kl=1e-3):
        return {"mean_kl": kl, "top1_agreement": 0.99, "judged_by": judge, "tokenization": tokens,
                "llama_cpp": {"mean_kl": cpp_kl, "top1_agreement": 0.98, "tokenization": tokens}}

    # SmolLM2-135M q8_0: exact enough in transformers (1e-3), 7.7e-3 in llama.cpp (8-bit activations, f16 KV cache)
    assert problems(figures(7.7e-3), 5e-3, "q8_0") == []
    assert problems(figures(7.7e-3, "llama.cpp", 7.7e-3), 5e-3, "q8_0") == []
    broken = problems(figures(0.12), 5e-3, "q8_0")
    assert len(broken) == 1 and "in llama.cpp" in broken[0] and f"> {LLAMA_CPP_KL_FLOOR:g}" in broken[0]
    assert problems(figures(1e-4, kl=6e-3), 5e-3, "q8_0")[0].startswith("mean KL 0.006 > 0.005")
