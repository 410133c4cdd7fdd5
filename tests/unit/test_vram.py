"""The estimator's arithmetic, catalog, calibration against published peaks, planner and command line."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from bench.vram_calibration import calibrate, summary
from lorakit.vram.catalog import GPUS, MODELS, PUBLISHED_B, find_gpu, find_model
from lorakit.vram.estimate import GIB, Setup, estimate
from lorakit.vram.plan import fits, max_batch, max_seq_len, suggestions, verdict

from ..conftest import REPO

runner = CliRunner()
CALIBRATION = REPO / "tests" / "data" / "vram_calibration.csv"


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
            "lorakit.vram.report, lorakit.vram.command; assert 'torch' not in sys.modules, 'torch imported'")
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
    result = invoke("vram-estimate", "mistralai/Mistral-7B-v0.1", "--stage", "dpo", "--gpu", "all", "--json")
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
