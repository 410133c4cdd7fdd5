from pathlib import Path

import pytest

from lorakit.config import DPORecipe, SFTRecipe, load_recipe, parse_set
from lorakit.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_current_practice():
    recipe = load_recipe("sft")
    assert isinstance(recipe, SFTRecipe)
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) == (16, 32, 0.05)
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.train.learning_rate == 2.0e-4
    assert recipe.train.adam_beta2 == 0.999
    assert recipe.train.max_grad_norm == 1.0
    assert recipe.train.gradient_checkpointing is True
    assert recipe.train.lr_scheduler_type == "cosine"
    assert 0.02 <= recipe.train.warmup_ratio <= 0.05


def test_dpo_defaults_use_a_smaller_learning_rate():
    dpo = load_recipe("dpo")
    assert isinstance(dpo, DPORecipe)
    assert dpo.train.learning_rate < load_recipe("sft").train.learning_rate
    # A partial train section keeps the stage's own defaults.
    dpo = load_recipe("dpo", overrides=["train.epochs=2"])
    assert dpo.train.learning_rate == 5.0e-5 and dpo.train.epochs == 2


def test_all_problems_reported_at_once_with_suggestions(tmp_path):
    path = write(tmp_path, "model:\n  name_or_pth: x\nlora:\n  r: -1\ntrain:\n  lerning_rate: 1.0\n  epochs: many\n")
    with pytest.raises(ConfigError) as info:
        load_recipe("sft", path)
    message = info.value.message
    assert "4 problems" in message
    assert "model.name_or_pth: unknown key; did you mean 'model.name_or_path'?" in message
    assert "train.lerning_rate: unknown key; did you mean 'train.learning_rate'?" in message
    assert "lora.r:" in message and "greater than 0" in message
    assert "train.epochs:" in message


def test_unknown_section_is_rejected(tmp_path):
    path = write(tmp_path, "trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'\?"):
        load_recipe("sft", path)


def test_resolution_order_yaml_then_set_then_flags(tmp_path):
    path = write(tmp_path, "lora:\n  r: 8\ntrain:\n  learning_rate: 1.0e-4\n  max_steps: 3\n")
    recipe = load_recipe("sft", path, overrides=["lora.r=32", "train.max_steps=7"], flags={"max_steps": 9})
    assert recipe.lora.r == 32
    assert recipe.train.learning_rate == 1.0e-4
    assert recipe.train.max_steps == 9


def test_set_reads_yaml_scalars_and_scientific_floats():
    assert parse_set("train.learning_rate=2e-4") == (["train", "learning_rate"], 2e-4)
    assert parse_set("lora.target_modules=[q_proj, v_proj]") == (["lora", "target_modules"], ["q_proj", "v_proj"])
    assert parse_set("train.gradient_checkpointing=false") == (["train", "gradient_checkpointing"], False)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set("lora.r")


def test_wrong_stage_recipe_is_refused(tmp_path):
    path = write(tmp_path, "stage: dpo\n")
    with pytest.raises(ConfigError, match="this is a 'dpo' recipe, not 'sft'") as refused:
        load_recipe("sft", path)
    assert refused.value.hint == f"run it with `lorakit dpo --recipe {path}`"
    pipeline = Path(__file__).resolve().parents[2] / "recipes" / "tiny-cpu-pipeline.yaml"
    with pytest.raises(ConfigError) as refused:
        load_recipe("sft", pipeline)
    assert refused.value.hint == f"run it with `lorakit run {pipeline}`"  # there is no `lorakit pipeline`


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "lora:\n  r: 8\n   alpha: [\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml line \d+: invalid YAML"):
        load_recipe("sft", path)


def test_precompute_ref_log_probs_is_auto_true_or_false():
    assert load_recipe("dpo").dpo.precompute_ref_log_probs == "auto"
    assert load_recipe("dpo", overrides=["dpo.precompute_ref_log_probs=true"]).dpo.precompute_ref_log_probs is True
    assert load_recipe("dpo", overrides=["dpo.precompute_ref_log_probs=false"]).dpo.precompute_ref_log_probs is False
    with pytest.raises(ConfigError, match="precompute_ref_log_probs"):
        load_recipe("dpo", overrides=["dpo.precompute_ref_log_probs=sometimes"])


def test_report_to_takes_one_logger_or_a_list():
    assert load_recipe("sft", overrides=["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    assert load_recipe("sft", overrides=["train.report_to=[tensorboard, wandb]"]).train.report_to == [
        "tensorboard", "wandb"]
    assert load_recipe("sft", overrides=["train.report_to=none"]).train.report_to == []
    with pytest.raises(ConfigError, match="report_to"):
        load_recipe("sft", overrides=["train.report_to=mlflow"])
