"""GRPO's rewards without training: the built-ins on real replies, a user's file in every way it can be wrong, a reward
model folder, and the checks of the data against what the rewards read."""

from __future__ import annotations

import math

import pytest

from lorakit.config import load_recipe
from lorakit.errors import ConfigError, DataError, RewardError
from lorakit.rewards import (
    TRLReward,
    check_reward_columns,
    check_reward_values,
    probe_user_rewards,
    resolve_rewards,
    score_completions,
    total_reward,
)


def rewards(*specs, max_completion_length: int = 64):
    recipe = load_recipe("grpo", None, [f"grpo.rewards={list(specs)!r}".replace("'", '"')])
    return resolve_rewards(recipe.grpo.rewards, max_completion_length)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------------------------------------
# Built-ins


@pytest.mark.parametrize("reply", [
    "42", "42.", "#### 42", "so the total is 40 + 2\n#### 42", "The result is \\boxed{42}.", "Answer: 42",
    "Let me think. 6 x 7 = 42.\nAnswer: 42", "answer is: 42.0", "**Answer:** $42$", "\\boxed{42.00}",
])
def test_exact_answer_reads_every_final_answer_style(reply):
    (reward,) = rewards("exact_answer")
    assert reward.function(completions=[reply, chat(reply)], answer=["42", 42]) == [1.0, 1.0]


@pytest.mark.parametrize("reply", ["43", "Answer: 41", "#### 4 2", "the answer is 42 or 43\nAnswer: 43", "", "forty"])
def test_exact_answer_rejects_other_answers(reply):
    (reward,) = rewards("exact_answer")
    assert reward.function(completions=[reply], answer=["42"]) == [0.0]


def test_exact_answer_normalizes_both_sides():
    (reward,) = rewards({"name": "exact_answer", "column": "solution"})
    assert reward.needs == ("solution",)
    replies = ["Answer: 1,000", "#### Paris.", "\\boxed{x + 1}"]
    gold = ["The total is 1000.\n#### 1000", "paris", "x + 1"]
    assert reward.function(completions=replies, solution=gold) == [1.0, 1.0, 1.0]


def test_math_reward_uses_symbolic_equivalence():
    (reward,) = rewards("math")
    replies = ["The answer is $\\frac{1}{2}$", "\\boxed{0.5}", "\\boxed{1/3}", "no idea", "$\\frac{2}{4}$"]
    assert reward.function(completions=replies, answer=["0.5", "\\frac{1}{2}", "0.5", "0.5", "1/2"]) == \
        [1.0, 1.0, 0.0, 0.0, 1.0]


def test_format_and_regex():
    fmt, rx = rewards("format", {"name": "regex", "pattern": "Answer: \\d+$"})
    replies = ["<think>6 x 7</think> 42", "42", "<think></think>42", "<think>x</think>\nAnswer: 42"]
    assert fmt.function(completions=replies) == [1.0, 0.0, 0.0, 1.0]
    assert rx.function(completions=replies) == [0.0, 0.0, 0.0, 1.0]
    (strict,) = rewards({"name": "format", "pattern": "Answer: \\d+"})
    assert strict.function(completions=["Answer: 7", "Answer: 7 because", chat("Answer: 12")]) == [1.0, 0.0, 1.0]


def test_json_reward_with_and_without_schema(tmp_path):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    file = tmp_path / "schema.json"
    file.write_text(__import__("json").dumps(schema))
    plain, checked = rewards("json", {"name": "json", "schema": str(file)})
    replies = ['{"name": "Ada", "age": 36}', '```json\n{"name": "Ada", "age": "36"}\n```', "Ada, 36", "[1, 2]",
               "[" * 5000]
    assert plain.function(completions=replies) == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert checked.function(completions=replies) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_json_schema_is_checked_before_training():
    with pytest.raises(RewardError, match="not a valid JSON Schema"):
        rewards({"name": "json", "schema": {"type": "no-such-type"}})


def test_length_is_the_soft_overlong_penalty():
    (reward,) = rewards({"name": "length", "soft_punish_cache": 20}, max_completion_length=100)
    ids = [[1] * 50, [1] * 80, [1] * 90, [1] * 100]
    assert reward.function(completions=["x"] * 4, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0]


def test_weights_and_unique_names():
    specs = rewards("exact_answer", {"name": "format", "weight": 0.5}, {"name": "format", "pattern": "x"})
    assert [r.name for r in specs] == ["exact_answer", "format", "format_2"]
    scores = score_completions(specs, ["q"], ["<think>a</think> Answer: 7"], [[1]], {"answer": ["7"]})
    assert scores == {"exact_answer": [1.0], "format": [1.0], "format_2": [0.0]}
    assert total_reward(specs, scores) == [1.5]


@pytest.mark.parametrize("spec, message", [
    ({"name": "regex"}, "needs a pattern"),
    ({"name": "format", "pattern": "("}, "not a regular expression"),
    ({"name": "exact_answer", "pattern": "x"}, "takes no pattern"),
    ({"name": "length", "column": "x"}, "takes no column"),
    ({"name": "rewards.py:score", "column": "x"}, "takes no column"),
    ({"name": ""}, "must be a built-in reward"),
])
def test_reward_options_are_checked_in_the_recipe(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("grpo", None, [f"grpo.rewards=[{spec!r}]".replace("'", '"')])


def test_unknown_reward_names_the_choices():
    with pytest.raises(RewardError, match="not a built-in") as info:
        rewards("exact")
    assert "exact_answer" in info.value.hint
    with pytest.raises(RewardError) as info:
        rewards("my_rewards.py")
    assert "my_rewards.py:score" in info.value.hint


# ---------------------------------------------------------------------------------------------------------------
# A user's file


def user_reward(tmp_path, body: str, name: str = "score"):
    file = tmp_path / "my_rewards.py"
    file.write_text(body)
    (reward,) = rewards(f"{file}:{name}")
    return reward, file


def call(reward, completions, rows=None, **columns):
    rows = rows or list(range(1, len(completions) + 1))
    return TRLReward(reward)(["p"] * len(completions), completions, [[1]] * len(completions), lorakit_row=rows,
                             **columns)


def test_user_function_gets_the_columns_it_names(tmp_path):
    reward, _ = user_reward(tmp_path, "def score(completions, answer, **kwargs):\n"
                                      "    return [float(c == a) for c, a in zip(completions, answer)]\n")
    assert reward.needs == ("answer",) and reward.name == "score"
    assert call(reward, ["1", "2"], answer=["1", "3"]) == [1.0, 0.0]


def test_user_function_without_kwargs_gets_only_what_it_names(tmp_path):
    reward, _ = user_reward(tmp_path, "import numpy\n"
                                      "def score(completions):\n    return numpy.array([len(c) for c in completions])\n")
    assert call(reward, ["ab", "abc"], answer=["x", "y"]) == [2.0, 3.0]


BAD_FILES = {
    "syntax": ("def score(completions, **kw)\n    return [1.0]\n", "line 1"),
    "import": ("import no_such_module_xyz\n", "importing"),
    "missing": ("def other(completions, **kw):\n    return [1.0]\n", "has no function 'score'"),
    "not callable": ("score = 3\n", "is a int, not a function"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_user_file_that_cannot_load(tmp_path, case):
    body, fragment = BAD_FILES[case]
    file = tmp_path / "my_rewards.py"
    file.write_text(body)
    with pytest.raises(RewardError) as info:
        rewards(f"{file}:score")
    assert fragment in info.value.message and f"{file}:score" in info.value.message and info.value.hint


def test_user_file_that_does_not_exist(tmp_path):
    with pytest.raises(RewardError, match="is not a file"):
        rewards(f"{tmp_path / 'nope.py'}:score")


BAD_RESULTS = {
    "raises": ("    if 'boom' in completions:\n        raise KeyError('answer')\n    return [1.0] * len(completions)",
               "raised KeyError: 'answer' on row 12"),
    "wrong count": ("    return [1.0]", "returned 1 value(s) for 3 completions"),
    "None": ("    return [1.0, None, 1.0]", "returned None for row 12"),
    "NaN": ("    return [1.0, float('nan'), 1.0]", "returned nan for row 12"),
    "inf": ("    return [1.0, 1.0, float('-inf')]", "returned -inf for row 13"),
    "a string": ("    return [1.0, '0.5', 1.0]", "returned a string ('0.5') for row 12"),
    "a string alone": ("    return 'good'", "returned str 'good', not a list of numbers"),
    "a dict": ("    return [1.0, {'x': 1}, 1.0]", "returned a dict for row 12"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_user_function_that_answers_wrongly_names_file_function_and_row(tmp_path, case):
    line, fragment = BAD_RESULTS[case]
    reward, file = user_reward(tmp_path, f"def score(completions, **kwargs):\n{line}\n")
    with pytest.raises(RewardError) as info:
        call(reward, ["a", "boom", "c"], rows=[11, 12, 13])
    assert fragment in info.value.message, info.value.message
    assert f"{file}:score" in info.value.message and info.value.hint


def test_probe_fails_before_training(tmp_path):
    reward, file = user_reward(tmp_path, "def score(completions, answer, **kwargs):\n"
                                         "    return [int(c[0]['content']) for c in completions]\n")
    prompts = [[{"role": "user", "content": "q"}]] * 3
    with pytest.raises(RewardError, match="raised ValueError.*row 5.*probed before training"):
        probe_user_rewards([reward], prompts, {"answer": ["1", "2", "3"]}, [5, 6, 7])


def test_probe_passes_a_function_that_scores_empty_replies(tmp_path):
    reward, _ = user_reward(tmp_path, "def score(completions, **kwargs):\n    return [0.0 for c in completions]\n")
    probe_user_rewards([reward], ["q", "r"], {}, [1, 2])


# ---------------------------------------------------------------------------------------------------------------
# Against the data


def test_missing_column_names_the_reward_and_the_columns(tmp_path):
    reward, _ = user_reward(tmp_path, "def score(completions, tests, **kwargs):\n    return [0.0] * len(completions)\n")
    specs = rewards("exact_answer") + [reward]
    with pytest.raises(DataError) as info:
        check_reward_columns(specs, ["prompt", "solution", "lorakit_row"], "data.jsonl")
    message = info.value.message
    assert "data.jsonl" in message and "reads column(s) answer" in message and "reads column(s) tests" in message
    assert "it has prompt, solution" in message and "lorakit_row" not in message
    assert "column: solution" in info.value.hint


def test_empty_answers_name_the_rows():
    (exact,) = rewards("exact_answer")
    with pytest.raises(DataError, match=r"empty in 2 row\(s\): 3, 5"):
        check_reward_values([exact], {"answer": ["1", "2", None, "4", " "]}, [1, 2, 3, 4, 5], "d.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# A reward model folder


def test_reward_model_folder_is_checked_before_loading(tmp_path):
    import json

    folder = tmp_path / "rm"
    folder.mkdir()
    with pytest.raises(RewardError, match="no config.json"):
        rewards(str(folder))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(RewardError, match="not a sequence-classification model"):
        rewards(str(folder))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"],
                                                    "id2label": {"0": "a", "1": "b"}}))
    with pytest.raises(RewardError, match="2 labels"):
        rewards(str(folder))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(RewardError, match="no .safetensors"):
        rewards(str(folder))


def test_reward_model_scores_like_its_logit(tiny_llama, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from lorakit.chat_template import resolve_chat_template

    config = LlamaConfig.from_pretrained(tiny_llama)
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    resolve_chat_template(tokenizer, None)  # lorakit's ChatML default: the reward model renders chats with it
    folder = tmp_path / "my-rm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (reward,) = rewards(str(folder))
    assert reward.name == "my-rm" and reward.kind == "model"
    prompts = [[{"role": "user", "content": "What is the capital of France?"}]] * 2
    scores = call(reward, [chat("Paris."), chat("The capital of France is Paris, a large city.")], answer=["", ""])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]
    # the score is the model's logit on the rendered prompt + reply
    text = tokenizer.apply_chat_template(prompts[0] + chat("Paris."), tokenize=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        expected = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert reward.function(prompts[:1], [chat("Paris.")])[0] == pytest.approx(expected, abs=1e-5)
