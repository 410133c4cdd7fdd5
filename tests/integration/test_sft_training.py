"""Real SFT runs on the bundled tiny model: loss falls, only LoRA weights change, runs resume, outputs are safe."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from lorakit.errors import RunError, RunInterrupted
from lorakit.outputs import read_run
from lorakit.train.sft import run_sft

from ..conftest import REPO, sft_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_loss_falls_clearly(sft_run):
    summary = sft_run.summary
    assert summary["steps"] == 150
    assert summary["final_loss"] < 0.25 * summary["first_loss"]


def test_run_folder_holds_everything_the_next_stage_needs(sft_run):
    run = read_run(sft_run.path, expect_stage=("sft",))
    files = {p.name for p in sft_run.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
            "lorakit.yaml", "manifest.json", "metrics.jsonl", "README.md", "checkpoints", "report.html"} <= files
    assert not any(name.endswith((".bin", ".pt")) and "checkpoint" not in name for name in files)
    manifest = run.manifest
    assert manifest["status"] == "complete" and manifest["parent"] is None
    assert manifest["base_model"]["name"] == "builtin:tiny-llama"
    assert manifest["dataset"]["fingerprint"].startswith("sha256:")
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes"} <= set(manifest["versions"])
    assert manifest["started_at"] <= manifest["finished_at"]
    assert run.recipe.lora.r == 16
    steps = [m["step"] for m in run.metrics if "loss" in m]
    assert steps == sorted(steps) and steps[-1] == 150
    assert any("eval_loss" in m for m in run.metrics)
    # No hidden staging folder is left beside the finished run.
    assert not (sft_run.path.parent / f".{sft_run.path.name}.partial").exists()


def test_adapter_loads_with_plain_peft_and_only_lora_weights_changed(sft_run):
    from peft import PeftModel

    run = read_run(sft_run.path)
    base_dir = run.base_model
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    original = load_file(os.path.join(base_dir, "model.safetensors"))
    model = PeftModel.from_pretrained(base, str(sft_run.path))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: any change is training
    assert_base_unchanged(model, original)


def assert_base_unchanged(model, original: dict) -> None:
    """Every base tensor of the model (a PeftModel) equals the base's file (as loaded: in the dtype the run trains
    its base in), and every one of them was compared."""
    compared = set()
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        if key in original:
            assert torch.equal(tensor, original[key].to(tensor.dtype)), f"base weight {key} changed"
            compared.add(key)
    assert compared == set(original), f"not compared: {sorted(set(original) - compared)[:5]}"


def test_generate_reproduces_trained_answers(sft_run):
    from typer.testing import CliRunner

    from lorakit.cli import app

    result = CliRunner().invoke(app, ["generate", str(sft_run.path), "--json",
                                      "-p", "What is the capital of France?", "-p", "What is 4 plus 5?"])
    assert result.exit_code == 0, result.output
    replies = json.loads(result.stdout)
    assert replies[0]["reply"] == "The capital of France is Paris."
    assert replies[1]["reply"] == "4 plus 5 is 9."


def test_qlora_nf4_trains_on_cpu(tmp_path):
    result = run_sft(sft_recipe(tmp_path / "qlora", "method=qlora", "data.eval=null", max_steps=40))
    assert result.summary["final_loss"] < 0.5 * result.summary["first_loss"]
    config = json.loads((tmp_path / "qlora" / "adapter_config.json").read_text())
    assert config["r"] == 16
    assert read_run(tmp_path / "qlora").manifest["method"] == "qlora"


def test_activation_offloading_trains_and_appears_in_the_estimate(tmp_path):
    from lorakit.vram.resolve import setup_from_recipe

    recipe = sft_recipe(tmp_path / "offload", "train.activation_offloading=true", "data.eval=null", max_steps=20)
    result = run_sft(recipe)
    assert result.summary["final_loss"] < 0.7 * result.summary["first_loss"]
    assert read_run(result.path).recipe.train.activation_offloading is True
    _, setup = setup_from_recipe(recipe)
    assert setup.activation_offloading is True


def test_4bit_inference_on_cpu_keeps_the_training_kernel():
    """A no-grad forward must not switch the NF4 weights to bitsandbytes' AVX512-BF16 repacked layout (bf16 absmax,
    and a crash when in_features is not a multiple of the blocksize): eval, merge gaps and verification would then
    measure other arithmetic than training used."""
    from lorakit.config import QLoraSection
    from lorakit.model import load_base_model, resolve_model_source

    model = load_base_model(resolve_model_source("builtin:tiny-llama"), "qlora", QLoraSection(), "float32", "cpu")
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    # the bundled model's down_proj (in_features 352, blocksize 64) is the shape the repack cannot handle
    assert any(m.in_features % m.weight.quant_state.blocksize for m in layers)
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


class CtrlCAt(TrainerCallback):
    """Presses Ctrl-C (a real SIGINT to this process) at a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def losses(path):
    return {m["step"]: m["loss"] for m in map(json.loads, open(path / "metrics.jsonl")) if "loss" in m}


def test_ctrl_c_checkpoints_and_resume_continues_the_same_curve(tmp_path):
    overrides = ("data.eval=null", "train.logging_steps=2", "train.save_steps=1000")
    straight = run_sft(sft_recipe(tmp_path / "straight", *overrides, max_steps=24))

    out = tmp_path / "interrupted"
    with pytest.raises(RunInterrupted, match="interrupted at step 10"):
        run_sft(sft_recipe(out, *overrides, max_steps=24), callbacks=[CtrlCAt(10)])
    staging = tmp_path / ".interrupted.partial"
    assert not out.exists() and (staging / "checkpoints" / "checkpoint-10").is_dir()

    with pytest.raises(RunError, match="interrupted run is waiting"):
        run_sft(sft_recipe(out, *overrides, max_steps=24))
    with pytest.raises(RunError, match="differ from the interrupted run"):
        run_sft(sft_recipe(out, *overrides, "lora.r=8", max_steps=24), resume=True)

    resumed = run_sft(sft_recipe(out, *overrides, max_steps=24), resume=True)
    assert resumed.summary["steps"] == 24
    expected, got = losses(straight.path), losses(resumed.path)
    assert sorted(got) == sorted(expected)  # every step logged once, none repeated
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), f"step {step}"
    # the summary covers the whole run, not only the part after the resume
    assert resumed.summary["first_loss"] == pytest.approx(straight.summary["first_loss"], rel=1e-4)
    assert resumed.summary["final_loss"] == pytest.approx(straight.summary["final_loss"], rel=1e-4)


def test_resume_never_trains_past_max_steps(tmp_path):
    overrides = ("data.eval=null", "train.logging_steps=1", "train.save_steps=1000")
    # Ctrl-C during the last step: that step finished, so the run is complete, not interrupted
    done = run_sft(sft_recipe(tmp_path / "last", *overrides, max_steps=3), callbacks=[CtrlCAt(3)])
    assert done.summary["steps"] == 3 and max(losses(done.path)) == 3
    # a checkpoint at step 4 resumed with --max-steps 3 would train a step past it: refused, kept
    out = tmp_path / "interrupted"
    with pytest.raises(RunInterrupted, match="interrupted at step 4"):
        run_sft(sft_recipe(out, *overrides, max_steps=6), callbacks=[CtrlCAt(4)])
    with pytest.raises(RunError, match="checkpoint-4 is already at step 4, past max_steps 3"):
        run_sft(sft_recipe(out, *overrides, max_steps=3), resume=True)
    resumed = run_sft(sft_recipe(out, *overrides, max_steps=5), resume=True)
    assert resumed.summary["steps"] == 5 and sorted(losses(resumed.path)) == [1, 2, 3, 4, 5]


def test_the_last_step_is_logged_even_between_logging_steps(tmp_path):
    result = run_sft(sft_recipe(tmp_path / "run", "data.eval=null", "train.logging_steps=10", max_steps=4))
    logged = losses(result.path)
    assert max(logged) == 4
    assert result.summary["final_loss"] == logged[4] != result.summary["first_loss"]


def test_finished_run_is_not_overwritten_without_force(sft_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RunError, match="already exists"):
        run_sft(sft_recipe(out, max_steps=1))
    assert (out / "keep.txt").read_text() == "precious"


def test_tokenization_is_cached(tmp_path):
    from lorakit.data.sft import prepare_sft_data
    from lorakit.model import load_tokenizer, resolve_model_source

    recipe = sft_recipe(tmp_path / "unused")
    tokenizer = load_tokenizer(resolve_model_source("builtin:tiny-llama"))
    first = prepare_sft_data(recipe.data, tokenizer, seed=0)
    again = prepare_sft_data(recipe.data, tokenizer, seed=0)
    assert again.cached
    assert first.train["input_ids"] == again.train["input_ids"]
    changed = prepare_sft_data(recipe.data.model_copy(update={"max_length": 40}), tokenizer, seed=0)
    assert not changed.cached and max(changed.train["length"]) == 40 and changed.stats["truncated"] > 0


def test_tokenizer_keeps_the_runs_chat_template(sft_run):
    tokenizer = AutoTokenizer.from_pretrained(sft_run.path)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
