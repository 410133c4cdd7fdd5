"""The grpo recipe section and GRPO's prompt data, without a model: strict settings, whole groups per step, the
pipeline stage, and every prompt format with its extra columns."""

from __future__ import annotations

import json

import pytest
import yaml

from lorakit.config import load_recipe
from lorakit.errors import ConfigError, DataError

from ..helpers import invoke


def grpo(*overrides, **flags):
    return load_recipe("grpo", None, ["grpo.rewards=[exact_answer]", *overrides], flags)


def test_defaults_are_trls_words_and_a_step_holds_whole_groups():
    recipe = grpo()
    assert (recipe.grpo.num_generations, recipe.grpo.beta, recipe.grpo.loss_type, recipe.grpo.scale_rewards) == \
        (8, 0.0, "dapo", "group")
    assert recipe.train.micro_batch_size == 8 and recipe.train.gradient_accumulation_steps == 1
    assert recipe.train.learning_rate == 1.0e-5 and recipe.train.logging_steps == 1
    with pytest.raises(ConfigError, match="12 completions per step is not a multiple of grpo.num_generations"):
        grpo("train.micro_batch_size=6", "train.gradient_accumulation_steps=2")
    grpo("train.micro_batch_size=4", "distributed.num_processes=2")  # 4 x 1 x 2 = one group of 8


@pytest.mark.parametrize("override, fragment", [
    ("grpo.num_generation=4", "did you mean 'grpo.num_generations'"),
    ("grpo.num_generations=1", "greater than or equal to 2"),
    ("grpo.loss_type=ppo", "grpo.loss_type"),
    ("grpo.beta=-0.1", "grpo.beta"),
    ("grpo.generation=sglang", "grpo.generation"),
    ("grpo.scale_rewards=true", "grpo.scale_rewards"),
])
def test_strict_like_every_section(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        grpo(override)


def test_rewards_as_text_names_and_mappings():
    recipe = load_recipe("grpo", None, ["grpo.rewards=exact_answer, format"])
    assert [r.name for r in recipe.grpo.rewards] == ["exact_answer", "format"]
    recipe = load_recipe("grpo", None, [], {"rewards": ["math", "my.py:score"]})
    assert [r.name for r in recipe.grpo.rewards] == ["math", "my.py:score"]
    with pytest.raises(ConfigError, match="grpo.rewards is empty"):
        load_recipe("grpo", None, [])


def test_cli_reward_flag_and_print_config():
    result = invoke("grpo", "--reward", "exact_answer,format", "--reward", "length", "--print-config",
                    "--set", "grpo.num_generations=4")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert [r["name"] for r in resolved["grpo"]["rewards"]] == ["exact_answer", "format", "length"]
    assert resolved["stage"] == "grpo" and resolved["grpo"]["num_generations"] == 4


def test_generation_vllm_without_cuda_is_refused_before_loading():
    from lorakit.train.grpo import choose_generation

    with pytest.raises(ConfigError, match="grpo.generation is vllm, which needs a CUDA GPU"):
        choose_generation(grpo("grpo.generation=vllm").grpo, "cpu", "lora", None)
    backend, sleep, why = choose_generation(grpo().grpo, "cpu", "lora", None)
    assert (backend, sleep, why) == ("transformers", False, "auto: no CUDA GPU")


def test_pipeline_takes_grpo_after_sft_or_dpo():
    base = {"root": "out/p", "sft": {"data": {"train": "a.jsonl"}},
            "dpo": {"data": {"train": "b.jsonl"}},
            "grpo": {"data": {"train": "c.jsonl"}, "grpo": {"rewards": ["exact_answer"]}}}
    from lorakit.config import PipelineRecipe, validate_recipe

    for stages in (["sft", "grpo", "merge", "quantize"], ["sft", "dpo", "grpo", "merge"], ["grpo", "merge"]):
        assert validate_recipe(PipelineRecipe, {**base, "stages": stages}, "test").stages == stages
    with pytest.raises(ConfigError, match="subset of"):
        validate_recipe(PipelineRecipe, {**base, "stages": ["sft", "grpo", "dpo"]}, "test")
    with pytest.raises(ConfigError, match="no 'grpo' section"):
        validate_recipe(PipelineRecipe, {**{k: v for k, v in base.items() if k != "grpo"},
                                         "stages": ["sft", "grpo"]}, "test")


# ---------------------------------------------------------------------------------------------------------------
# Prompt data


def load(tmp_path, rows, fmt="auto", **section):
    from lorakit.data.load import load_rows
    from lorakit.data.prompts import load_prompt_rows

    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_prompt_rows(load_rows(str(file), None, "train", None), fmt, section.get("columns", {}),
                            section.get("system_prompt"))


def test_every_prompt_format_with_its_extra_columns(tmp_path):
    dataset, fmt = load(tmp_path, [{"prompt": "What is 2 + 2?", "answer": "4", "level": 1}])
    assert fmt == "prompt" and dataset[0]["prompt"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert dataset[0]["answer"] == "4" and dataset[0]["level"] == 1 and dataset[0]["lorakit_row"] == 1
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    dataset, fmt = load(tmp_path, [{"messages": chat, "solution": "x"}, {"messages": chat, "solution": "y"}])
    assert fmt == "messages" and dataset[1]["prompt"] == chat and dataset["lorakit_row"] == [1, 2]
    dataset, fmt = load(tmp_path, [{"instruction": "Add", "input": "2 and 3", "output": "5"}])
    assert fmt == "alpaca" and dataset[0]["prompt"][-1]["content"] == "Add\n\n2 and 3" and dataset[0]["output"] == "5"
    dataset, _ = load(tmp_path, [{"question": "Q?", "answer": "A"}], columns={"prompt": "question"},
                      system_prompt="Answer tersely.")
    assert dataset[0]["prompt"][0] == {"role": "system", "content": "Answer tersely."}
    dataset, _ = load(tmp_path, [{"prompt": chat, "answer": "a"}])  # a prompt given as messages
    assert dataset[0]["prompt"] == chat


@pytest.mark.parametrize("rows, fragment", [
    ([{"prompt": "ok"}, {"prompt": " "}], "row 2: 'prompt' is empty"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
     "the last turn is the assistant's"),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": " "}]}],
     "the prompt (the last user turn) is empty"),
    ([{"chosen": "a", "rejected": "b"}], "cannot tell the data format"),
    ([{"prompt": "q", "lorakit_row": 3}], "lorakit's own"),
])
def test_bad_prompt_rows_are_named(tmp_path, rows, fragment):
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, rows)


def test_a_supervised_format_is_not_a_prompt_format(tmp_path):
    with pytest.raises(DataError, match="'sharegpt' is not a prompt format"):
        load(tmp_path, [{"prompt": "q"}], fmt="sharegpt")
