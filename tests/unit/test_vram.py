"""The estimator's arithmetic, catalog, calibration against published peaks, planner and command line."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from bench.vram_calibration import calibrate, summary
from lorakit.cli import app
from lorakit.vram.catalog import GPUS, MODELS, PUBLISHED_B, find_gpu, find_model
from lorakit.vram.estimate import GIB, Setup, estimate
from lorakit.vram.plan import fits, max_batch, max_seq_len, suggestions, verdict

from ..conftest import REPO

runner = CliRunner()
CALIBRATION = REPO / "tests" / "data" / "vram_calibration.csv"
VALIDATION = REPO / "tests" / "data" / "vram_validation.csv"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_catalog_shape_reproduces_published_parameter_count(name):
    assert MODELS[name].total_params / 1e9 == pytest.approx(PUBLISHED_B[name], rel=0.01)


@pytest.mark.parametrize("name", [
    "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf", "Meta-Llama-3-8B",
    "Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.3-70B-Instruct", "Mistral-7B-v0.1",
    "Mixtral-8x7B-v0.1", "Qwen2.5-0.5B", "Qwen2.5-72B", "Qwen3-0.6B", "Qwen3-32B", "gemma-2b", "gemma-7b",
    "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "gemma-3-1b-pt", "gemma-3-27b-pt", "phi-1_5", "phi-2",
    "Phi-3-mini-4k-instruct", "phi-4", "TinyLlama-1.1B-Chat-v1.0", "SmolLM2-1.7B", "falcon-7b", "falcon-40b",
    "stablelm-3b-4e1t", "pythia-1b", "CodeLlama-34b-hf"])
def test_catalog_covers_the_popular_models(name):
    assert find_model(name) is not None


def test_estimate_matches_published_measurements():
    rows = calibrate(CALIBRATION)
    stats = summary(rows)
    assert stats["rows"] >= 60
    assert stats["median_abs_error"] <= 0.10, stats
    assert stats["worst_abs_error"] <= 0.25, [(r.index, round(r.error, 3)) for r in rows if abs(r.error) > 0.25]


def test_estimator_imports_no_torch():
    code = ("import sys; import lorakit.vram.estimate, lorakit.vram.plan, lorakit.vram.resolve, "
            "lorakit.vram.render, lorakit.vram.command; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_terms_respond_to_their_knobs():
    shape = find_model("Llama-3.1-8B")
    base = Setup(method="lora", seq_len=4096, loss="plain", grad_checkpointing=False)
    plain = estimate(shape, base)
    assert estimate(shape, replace(base, loss="fused")).allocated < plain.allocated
    assert estimate(shape, replace(base, grad_checkpointing=True)).allocated < plain.allocated
    assert estimate(shape, replace(base, attn="eager")).allocated > plain.allocated  # s^2 scores
    # with checkpointing the weights dominate: a 4-bit base is smaller
    checkpointed = replace(base, grad_checkpointing=True, loss="fused")
    assert estimate(shape, replace(checkpointed, method="qlora")).allocated < estimate(shape, checkpointed).allocated
    # without it, prepare_model_for_kbit_training's fp32 residual stream doubles most activations: QLoRA can need
    # more than 16-bit LoRA; without the upcast it is smaller again
    qlora = estimate(shape, replace(base, method="qlora"))
    assert qlora.allocated > plain.allocated
    assert estimate(shape, replace(base, method="qlora", upcast_non_quantized=False)).allocated < plain.allocated
    assert estimate(shape, replace(base, batch_size=2)).allocated > plain.allocated
    # NF4 with double quantization: ~0.516 bytes per quantized parameter; without: 0.5625
    dq = estimate(shape, Setup(double_quant=True)).term("base_weights") / shape.quantizable_params
    no_dq = estimate(shape, Setup(double_quant=False)).term("base_weights") / shape.quantizable_params
    assert dq == pytest.approx(0.516, abs=0.002) and no_dq == pytest.approx(0.5625, abs=0.002)
    # full fine-tuning with foreach AdamW peaks at the optimizer step
    full = estimate(find_model("Mistral-7B-v0.1"), Setup(method="full", seq_len=512, loss="fused"))
    assert full.peak_phase == "optimizer step"
    # paged optimizer states are outside torch's allocator but inside the GPU total
    paged = estimate(shape, Setup(method="lora", optimizer="paged-adamw"))
    assert paged.phase("outside allocator") > 0
    assert paged.total > paged.reserved + paged.phase("outside allocator")
    # DPO: policy on chosen + rejected; precomputed reference drops the reference adapter copy
    dpo = estimate(shape, Setup(stage="dpo"))
    assert dpo.tokens == 2 * estimate(shape, Setup()).tokens
    assert estimate(shape, Setup(stage="dpo-precomputed")).allocated < dpo.allocated


def test_planner_answers_fit_batch_sequence_and_fixes():
    shape = find_model("Llama-3.1-8B")
    gpu = GPUS["rtx4090"]
    setup = Setup(method="lora", seq_len=4096, loss="plain", grad_checkpointing=False)
    assert not fits(estimate(shape, setup), gpu)
    fixes = suggestions(shape, setup, gpu)
    assert fixes, "a fix should exist for an 8B model on 24 GB"
    assert fixes[0]["change"].startswith("loss: fused")  # free changes come first
    assert fixes[-1]["change"].startswith("seq-len")  # truncating data comes last
    assert all(f["total_gib"] <= gpu.memory_gib for f in fixes)

    fitting = Setup()  # QLoRA defaults
    best = max_batch(shape, fitting, gpu)
    assert best >= 1
    assert fits(estimate(shape, replace(fitting, batch_size=best)), gpu)
    assert not fits(estimate(shape, replace(fitting, batch_size=best + 1)), gpu)
    seq = max_seq_len(shape, fitting, gpu)
    assert fits(estimate(shape, replace(fitting, seq_len=seq)), gpu)
    assert not fits(estimate(shape, replace(fitting, seq_len=seq + 128)), gpu)
    # a 70B model in 16-bit LoRA fits no consumer card; the cumulative fix includes QLoRA
    big = verdict(find_model("Llama-3.1-70B"), Setup(method="lora"), GPUS["rtx4090"])
    assert not big.fits
    # faster GPUs train faster
    fast = verdict(shape, fitting, GPUS["h100"]).hours_per_million_tokens
    assert fast < verdict(shape, fitting, GPUS["rtx3090"]).hours_per_million_tokens


def test_gpu_names_are_forgiving():
    assert find_gpu("RTX 4090").key == "rtx4090"
    assert find_gpu("4090").key == "rtx4090"
    assert find_gpu("A100-80GB").key == "a100-80gb"
    assert find_gpu("rtx 9090") is None


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_json_has_every_term_and_gpu_verdicts():
    result = invoke("vram-estimate", "mistralai/Mistral-7B-v0.1", "--method", "qlora", "--stage", "dpo", "--gpu", "all",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    keys = {t["key"] for t in data["terms"]}
    assert {"base_weights", "lora_weights", "optimizer_states", "activations_checkpoints", "dequant",
            "cuda_context"} <= keys
    assert data["setup"]["stage"] == "dpo" and data["setup"]["method"] == "qlora"
    assert len(data["gpus"]) == len(GPUS)
    by_key = {g["gpu"]: g for g in data["gpus"]}
    assert by_key["h100"]["fits"] and by_key["h100"]["max_seq_len"] > by_key["rtx3080"]["max_seq_len"]
    # every GPU's verdict agrees with its memory
    assert all(g["fits"] == (data["total_gib"] <= g["memory_gib"]) for g in data["gpus"] if g["gpu"] != "t4")


def test_cli_recipe_uses_the_recipes_settings():
    result = invoke("vram-estimate", "--recipe", REPO / "recipes" / "llama3.1-8b-qlora-sft.yaml", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "meta-llama/Llama-3.1-8B"
    assert data["setup"]["method"] == "qlora"
    flagged = json.loads(invoke("vram-estimate", "--recipe", REPO / "recipes" / "llama3.1-8b-qlora-sft.yaml",
                                "--seq-len", "512", "--json").stdout)
    assert flagged["setup"]["seq_len"] == 512 and flagged["total_gib"] < data["total_gib"]


def test_cli_local_config_and_builtin(tmp_path):
    config = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 512, "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for target in (tmp_path, tmp_path / "config.json", "builtin:tiny-llama"):
        result = invoke("vram-estimate", target, "--method", "lora", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["params"] > 0


@pytest.mark.parametrize("args,fragment", [
    (["no-such-org/no-such-model"], "not in the catalog"),
    (["Llama-3.1-8B", "--gpu", "rtx4099"], "did you mean rtx4090"),
    (["Llama-3.1-8B", "--seq-len", "0"], "--seq-len"),
    (["Llama-3.1-8B", "--method", "prefix"], "--method"),
    (["Llama-3.1-8B", "--lora-targets", "q,zz"], "zz"),
    (["Qwen2.5-7b-typo"], "did you mean"),
])
def test_cli_bad_input_is_one_clean_line(args, fragment):
    result = invoke("vram-estimate", *args)
    assert result.exit_code != 0
    assert "error:" in result.output and "Traceback" not in result.output
    assert fragment in result.output, result.output


def test_cli_config_without_needed_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    result = invoke("vram-estimate", tmp_path / "config.json")
    assert result.exit_code == 2
    assert "missing field" in result.output and "config.json" in result.output


def test_precompute_ref_log_probs_auto_only_when_the_gpu_is_tight():
    from lorakit.train.preflight import choose_precompute

    shape = find_model("Qwen2.5-7B")
    setup = Setup(method="lora", stage="dpo", seq_len=2048, batch_size=4)
    with_reference = estimate(shape, setup).total / GIB
    precomputed = estimate(shape, replace(setup, stage="dpo-precomputed")).total / GIB
    assert precomputed < with_reference
    rtx4090, h100 = find_gpu("rtx4090").memory_gib, find_gpu("h100").memory_gib
    assert with_reference > 0.9 * rtx4090 and with_reference < 0.9 * h100
    assert choose_precompute(rtx4090, with_reference, precomputed)[0] is True
    assert choose_precompute(h100, with_reference, precomputed)[0] is False
    assert choose_precompute(None, with_reference, precomputed)[0] is False  # CPU: nothing to be short of
    assert choose_precompute(rtx4090, with_reference, with_reference)[0] is False  # would not help


def test_all_linear_lora_on_models_without_a_gated_mlp():
    plain = [name for name, shape in MODELS.items() if not shape.gated_mlp]
    assert plain  # phi, falcon, pythia...
    for name in plain:
        shape = MODELS[name]
        gated_like = shape.lora_params(16, ("q", "k", "v", "o", "gate", "up", "down"))
        assert gated_like == shape.lora_params(16, ("q", "k", "v", "o", "up", "down")) > 0
        assert estimate(shape, Setup()).total > 0  # defaults: qlora, all-linear
    result = CliRunner().invoke(app, ["vram-estimate", "microsoft/phi-2", "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("recipe", ["qwen2.5-7b-qlora-dpo.yaml", "llama3.1-8b-qlora-dpo.yaml"])
def test_dpo_recipe_estimate_before_its_sft_run_exists(recipe, tmp_path, monkeypatch):
    """The SFT run a DPO recipe continues is not there yet when a user plans: its SFT recipe says what it will be."""
    from pathlib import Path

    from lorakit.config import load_recipe

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    for path in (repo / "recipes").glob("*.yaml"):
        (tmp_path / "recipes" / path.name).write_text(path.read_text())
    dpo = load_recipe("dpo", tmp_path / "recipes" / recipe)
    sft = next(load_recipe("sft", p) for p in (tmp_path / "recipes").glob("*sft.yaml")
               if load_recipe("sft", p).output_dir == dpo.from_run)
    result = CliRunner().invoke(app, ["vram-estimate", "--recipe", f"recipes/{recipe}", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == sft.model.name_or_path and report["setup"]["method"] == sft.method == "qlora"
    assert report["setup"]["stage"] == "dpo"

    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / recipe).write_text((repo / "recipes" / recipe).read_text())
    result = CliRunner().invoke(app, ["vram-estimate", "--recipe", f"alone/{recipe}"])
    assert result.exit_code != 0 and "does not exist yet" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name,base", [("google/gemma-3-1b-it", "google/gemma-3-1b-pt"),
                                       ("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"),
                                       ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B")])
def test_instruct_and_it_releases_share_their_base_shape(name, base):
    assert find_model(name) is MODELS[base]


# -- coverage: mirrors, checkpoints, configs ------------------------------------------------------------------------

@pytest.mark.parametrize("name,base", [
    ("unsloth/Mistral-7B-v0.2", "mistral-community/Mistral-7B-v0.2"),
    ("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "TinyLlama/TinyLlama_v1.1"),
    ("EleutherAI/pythia-70m", "EleutherAI/pythia-70m"),
    ("bigscience/bloomz-7b1", "bigscience/bloom-7b1"),
    ("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "meta-llama/Llama-3.1-8B"),
    ("NousResearch/Llama-2-70b-hf", "meta-llama/Llama-2-70b-hf"),
    ("EleutherAI/pythia-1b-deduped", "EleutherAI/pythia-1b"),
])
def test_mirrors_and_checkpoints_estimate_offline(name, base):
    assert find_model(name) is MODELS[base]
    result = invoke("vram-estimate", name, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == name and data["params"] == MODELS[base].total_params
    assert "catalog" in data["shape_source"]


def test_config_on_stdin_and_shape_twins(tmp_path):
    config = {"model_type": "bloom", "n_embed": 4096, "n_layer": 30, "num_attention_heads": 32, "vocab_size": 250880}
    result = runner.invoke(app, ["vram-estimate", "-", "--json"], input=json.dumps(config))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == MODELS["bigscience/bloom-7b1"].total_params
    assert "same shape as bigscience/bloom-7b1" in data["shape_source"]


def test_a_config_in_the_local_hub_cache_resolves_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--tiny-thing" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--someone--tiny-thing" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-thing" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
                                                      "num_hidden_layers": 2, "num_attention_heads": 4,
                                                      "vocab_size": 1000}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    result = invoke("vram-estimate", "someone/tiny-thing", "--json")
    assert result.exit_code == 0, result.output
    assert "local Hugging Face cache" in json.loads(result.stdout)["shape_source"]


BAD_CONFIGS = [
    (b"[1, 2, 3]", "(top level)", "JSON object"),
    (json.dumps({"model_type": "llama", "hidden_size": "4096", "num_hidden_layers": 2, "num_attention_heads": 4,
                 "vocab_size": 10}).encode(), "hidden_size", "whole number"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 0,
                 "vocab_size": 10}).encode(), "num_attention_heads", "at least 1"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": -2, "num_attention_heads": 4,
                 "vocab_size": 10}).encode(), "num_hidden_layers", "at least 1"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "vocab_size": 10, "intermediate_size": -1}).encode(), "intermediate_size", "at least 1"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": True, "num_attention_heads": 4,
                 "vocab_size": 10}).encode(), "num_hidden_layers", "whole number"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 5,
                 "vocab_size": 10}).encode(), "num_attention_heads", "do not divide"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 3, "vocab_size": 10}).encode(), "num_key_value_heads", "must divide"),
    (json.dumps({"text_config": [1], "model_type": "gemma3"}).encode(), "text_config", "JSON object"),
    (b'{"hidden_size": 64, "model_type": "ll\xffama"}', "config.json", "not UTF-8"),
    (b"{" * 5000 + b"}" * 5000, "config.json", "JSON"),
    (b'{"hidden_size": 4096,', "config.json", "not valid JSON"),
    (json.dumps({"model_type": "llama", "hidden_size": 64.5, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "vocab_size": 10}).encode(), "hidden_size", "whole number"),
]


@pytest.mark.parametrize("content,field,fragment", BAD_CONFIGS)
def test_malformed_config_json_is_one_line_naming_file_and_field(tmp_path, content, field, fragment):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    result = invoke("vram-estimate", path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(path) in result.output.replace("\n", "")
    assert field in result.output and fragment in result.output, result.output


# -- new terms -------------------------------------------------------------------------------------------------------

def test_inference_in_8_and_4_bit():
    shape = find_model("Llama-3.1-8B")
    sizes = {quant: estimate(shape, Setup(method="lora", stage="inference", quant=quant, seq_len=1024)).allocated
             for quant in (None, "int8", "nf4", "fp4")}
    assert sizes[None] > sizes["int8"] > sizes["nf4"] == sizes["fp4"]
    int8 = estimate(shape, Setup(stage="inference", quant="int8", seq_len=1024))
    # LLM.int8: one byte per weight and an fp32 scale per output row
    rows = shape.layers * sum(out for _, out in shape.linear_shapes().values())
    assert int8.term("base_weights") == pytest.approx(shape.quantizable_params + 4 * rows, rel=0.02)
    result = invoke("vram-estimate", "Llama-3.1-8B", "--stage", "inference", "--quant", "int8", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["setup"]["quant"] == "int8"
    bad = invoke("vram-estimate", "Llama-3.1-8B", "--method", "lora", "--quant", "int8")
    assert bad.exit_code == 2 and "--quant" in bad.output


@pytest.mark.parametrize("checkpointing", [True, False])
def test_activation_offloading_moves_saved_activations_to_host(checkpointing):
    shape = find_model("Llama-3.1-8B")
    base = Setup(method="lora", seq_len=8192, grad_checkpointing=checkpointing)
    plain, offloaded = estimate(shape, base), estimate(shape, replace(base, activation_offloading=True))
    key = "activations_checkpoints" if checkpointing else "activations"
    # two layers' worth stays on the GPU (the one in flight and the one prefetched), the rest is pinned host memory
    assert offloaded.term(key) == pytest.approx(plain.term(key) * 2 / shape.layers)
    assert offloaded.host == pytest.approx(plain.term(key) - offloaded.term(key))
    assert offloaded.total < plain.total
    data = json.loads(invoke("vram-estimate", "Llama-3.1-8B", "--activation-offloading", "--json").stdout)
    assert data["host_gib"] > 0 and "trl" in data["assumptions"]


def test_optimizer_in_backward_drops_the_gradient_set():
    shape = find_model("Llama-3.2-3B")
    base = Setup(method="full", seq_len=2048, optimizer="paged-adamw-8bit")
    fused = estimate(shape, replace(base, optimizer_in_backward=True))
    # one parameter's gradient (and its update) at a time: the largest is the 128k x 3072 embedding
    assert not fused.term("gradients_step")
    assert fused.term("gradients") == 2 * shape.embed_params * 2
    assert fused.allocated < estimate(shape, base).allocated
    with pytest.raises(ValueError, match="optimizer_in_backward"):
        estimate(shape, replace(base, optimizer_in_backward=True, grad_accumulation=4))


def test_json_names_its_assumptions():
    data = json.loads(invoke("vram-estimate", "Qwen2.5-7B", "--method", "qlora", "--json").stdout)
    notes = data["assumptions"]
    assert {"torch", "transformers", "bitsandbytes", "peft", "installed"} <= set(notes)
    assert "0.43.2" in notes["bitsandbytes"] and "fp32" in notes["peft"]
    assert "torch" in notes["installed"]


# -- several GPUs ----------------------------------------------------------------------------------------------------

def test_per_gpu_terms_follow_the_sharding_arithmetic():
    shape = find_model("Mistral-7B-v0.1")
    one = estimate(shape, Setup(method="full", dtype="bf16", mixed_precision=False, seq_len=1024, optimizer="adamw"))
    params = shape.total_params
    for n in (2, 4, 8):
        ddp = estimate(shape, replace(one.setup, num_gpus=n, strategy="ddp"))
        zero2 = estimate(shape, replace(one.setup, num_gpus=n, strategy="zero2"))
        zero3 = estimate(shape, replace(one.setup, num_gpus=n, strategy="zero3"))
        fsdp = estimate(shape, replace(one.setup, num_gpus=n, strategy="fsdp"))
        # DDP replicates everything and adds its gradient buckets
        assert ddp.term("base_weights") == one.term("base_weights") == params * 2
        assert ddp.term("ddp_buckets") == params * 2
        # ZeRO-2 partitions gradients and optimizer states, not the weights
        assert zero2.term("base_weights") == params * 2
        assert zero2.term("gradients_step") == params * 2 / n
        assert zero2.term("optimizer_states") == params * 4 / n
        # ZeRO-3 and FSDP partition the weights too, and hold two gathered layers
        for sharded in (zero3, fsdp):
            assert sharded.term("base_weights") == params * 2 / n
            assert sharded.term("optimizer_states") == params * 4 / n
            layer = (shape.layer_linear_params() + shape.layer_other_params()) * 2
            assert sharded.term("gathered_layers") == pytest.approx(2 * layer * (1 - 1 / n))
        # activations are per micro-batch on every GPU
        assert fsdp.term("activations_checkpoints") == one.term("activations_checkpoints")
        assert one.allocated > ddp.allocated - ddp.term("ddp_buckets") - 1
        assert fsdp.allocated < zero2.allocated < ddp.allocated


def test_per_gpu_estimates_against_public_two_gpu_fsdp_measurements():
    """fms-acceleration's 2 x A100 FSDP runs (per-GPU torch peaks), the same scenarios as its 1-GPU calibration rows."""
    rows = [r for r in calibrate(VALIDATION) if r.setup.num_gpus == 2]
    assert len(rows) >= 10
    full = [r for r in rows if r.setup.method == "full"]
    assert all(abs(r.error) <= 0.05 for r in full), [(r.index, round(r.error, 3)) for r in full]
    stats = summary(rows)
    assert stats["median_abs_error"] <= 0.12 and stats["worst_abs_error"] <= 0.30, stats


def test_cli_multi_gpu_plan_says_when_two_smaller_gpus_beat_one_bigger():
    result = invoke("vram-estimate", "Llama-3.1-8B", "--method", "lora", "--seq-len", "4096", "--gpu", "all", "--json")
    data = json.loads(result.stdout)
    lines = [item["line"] for item in data["multi_gpu"]]
    assert any("2 x RTX 4080" in line and "faster than 1 x" in line for line in lines), lines
    for item in data["multi_gpu"]:
        one = verdict(find_model("Llama-3.1-8B"), Setup(method="lora", seq_len=4096), GPUS[item["several"]["gpu"]])
        assert not one.fits  # a pair is offered only where one of them does not fit
        assert item["several"]["per_gpu_gib"] <= GPUS[item["several"]["gpu"]].memory_gib
    big = json.loads(invoke("vram-estimate", "Llama-3.1-70B", "--method", "lora", "--gpu", "all", "--json").stdout)
    assert any("no single GPU" in item["line"] for item in big["multi_gpu"])
    per_gpu = json.loads(invoke("vram-estimate", "Llama-3.1-70B", "--method", "lora", "--num-gpus", "4",
                                "--strategy", "fsdp", "--gpu", "a100-80gb", "--json").stdout)
    assert per_gpu["per_gpu"] and per_gpu["gpus"][0]["fits"] and per_gpu["setup"]["num_gpus"] == 4
    bad = invoke("vram-estimate", "Llama-3.1-8B", "--num-gpus", "2", "--strategy", "zero4")
    assert bad.exit_code == 2 and "did you mean" not in bad.output and "--strategy zero" in bad.output


def test_calibration_generalizes_across_sources():
    """Leave one source out: refitting the few non-exact constants on the other sources changes the held-out
    source's median error by little (no constant is tuned to one source)."""
    from bench.vram_calibration import leave_one_source_out

    results = leave_one_source_out(calibrate(CALIBRATION))
    assert len(results) == 3
    for item in results:
        assert item["median_refit"] <= 0.10, item
        assert abs(item["median_refit"] - item["median_shipped"]) <= 0.03, item


# -- one name per setting: recipe fields, --set and the flags (old spellings as aliases) -----------------------------

def estimate_json(*args):
    result = invoke("vram-estimate", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_defaults_are_the_run_lorakit_sft_starts(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: sft\nmodel:\n  name_or_path: meta-llama/Llama-3.1-8B\n")
    plain, from_recipe = estimate_json("meta-llama/Llama-3.1-8B"), estimate_json("--recipe", recipe)
    assert plain["setup"]["method"] == "lora"  # what `lorakit sft` trains unless told otherwise
    assert plain["setup"] == from_recipe["setup"] and plain["total_gib"] == from_recipe["total_gib"]


@pytest.mark.parametrize("spellings", [
    [["--optimizer", "paged-adamw-8bit"], ["--optim", "paged_adamw_8bit"], ["--set", "train.optim=paged_adamw_8bit"]],
    [["--seq-len", "4096"], ["--max-length", "4096"], ["--set", "data.max_length=4096"]],
    [["--batch-size", "2"], ["--micro-batch-size", "2"], ["--set", "train.micro_batch_size=2"]],
    [["--lora-targets", "q,v"], ["--target-modules", "q_proj,v_proj"], ["--set", "lora.target_modules=[q_proj,v_proj]"]],
    [["--num-gpus", "2"], ["--num-processes", "2"], ["--set", "distributed.num_processes=2"]],
    [["--dtype", "fp32"], ["--precision", "fp32"], ["--precision", "float32"], ["--set", "train.precision=fp32"]],
    [["--attn", "eager"], ["--attn-implementation", "eager"], ["--set", "model.attn_implementation=eager"]],
    [["--method", "qlora"], ["--set", "method=qlora"]],
])
def test_each_setting_has_the_recipe_name_and_its_old_spellings(spellings):
    estimates = [estimate_json("meta-llama/Llama-3.1-8B", *args) for args in spellings]
    assert all(e["setup"] == estimates[0]["setup"] and e["total_gib"] == estimates[0]["total_gib"]
               for e in estimates)
    assert estimates[0]["total_gib"] != estimate_json("meta-llama/Llama-3.1-8B")["total_gib"]  # each one counts


@pytest.mark.parametrize("args,fragment", [
    (["--optimizer", "adamw_9bit"], "--optim/--optimizer (train.optim): 'adamw_9bit' is not one of auto, adamw_torch"),
    (["--set", "lora.rank=8"], "did you mean 'lora.r'"),
    (["--set", "train.optim=paged-adamw-8bit"], "train.optim"),  # recipes keep their one spelling
])
def test_bad_settings_name_the_field(args, fragment):
    result = invoke("vram-estimate", "meta-llama/Llama-3.1-8B", *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert fragment in result.output, result.output
