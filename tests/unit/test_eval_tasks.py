"""A user's question set as an lm-eval task: the YAML lorakit writes, and the rows it refuses (no model, no lm-eval)."""

import json

import pytest
import yaml

from lorakit.errors import DataError, ResourceError
from lorakit.eval.tasks import write_local_task

from ..conftest import EXAMPLES


def rows(tmp_path, *items, name="set.jsonl"):
    path = tmp_path / name
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))
    return path


def test_multiple_choice_set_becomes_an_lm_eval_task(tmp_path):
    task = write_local_task(EXAMPLES / "mc-facts.jsonl", folder=tmp_path)
    assert (task.name, task.kind, task.rows) == ("mc_facts", "multiple_choice", 44)
    config = yaml.safe_load(task.yaml_path.read_text())
    assert config["task"] == "mc_facts" and config["output_type"] == "multiple_choice"
    assert config["dataset_path"] == "json"
    assert config["dataset_kwargs"]["data_files"]["test"] == str((EXAMPLES / "mc-facts.jsonl").resolve())
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
    assert config["doc_to_choice"] == "{{choices}}"


def test_generation_set_stops_at_the_end_of_turn(tmp_path):
    task = write_local_task(EXAMPLES / "qa-facts.jsonl", stop=["<|im_end|>"], folder=tmp_path)
    config = yaml.safe_load(task.yaml_path.read_text())
    assert task.kind == "generate_until" and config["output_type"] == "generate_until"
    assert config["generation_kwargs"]["until"] == ["\n\n", "<|im_end|>"]
    assert config["metric_list"][0]["metric"] == "exact_match"


def test_the_yaml_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    source = rows(tmp_path, {"question": "q?", "choices": ["a", "b"], "answer": "b"})
    first = write_local_task(source)
    assert first.yaml_path.is_relative_to(tmp_path / "cache" / "tasks")
    assert write_local_task(source).yaml_path == first.yaml_path
    source.write_text(json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 0}) + "\n")
    assert write_local_task(source).yaml_path != first.yaml_path  # other rows, other task


@pytest.mark.parametrize("items, fragment", [
    ([{"question": "q", "choices": ["a", "b"], "answer": 2}], "set.jsonl:1: 'answer' 2 is neither an index"),
    ([{"question": "q", "choices": ["a", "b"], "answer": "c"}], "'answer' 'c' is neither an index"),
    ([{"question": "q", "choices": ["a"], "answer": 0}], "set.jsonl:1: 'choices' must be a list of at least two"),
    ([{"question": "q", "choices": ["a", "b"], "answer": 0}, {"question": "q2", "answer": "x"}],
     "set.jsonl:2: no 'choices'"),
    ([{"question": "q", "answer": "x"}, {"question": "q2", "choices": ["a", "b"], "answer": 0}],
     "set.jsonl:2: has 'choices' but the first row has none"),
    ([{"question": "q", "answer": "x"}, {"prompt": "q2", "answer": "y"}], "set.jsonl:2: no question"),
    ([{"question": "q", "answer": ""}], "'answer' must be a non-empty string"),
    ([{"question": "q", "choices": ["a", "b"], "answer": 0}, "{not json"], "set.jsonl:2: not valid JSON"),
    ([{"question": "q", "choices": ["a", "b"], "answer": True}], "'answer' True is neither an index"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, items, fragment):
    with pytest.raises(DataError) as caught:
        write_local_task(rows(tmp_path, *items), folder=tmp_path / "out")
    assert fragment in caught.value.message and caught.value.hint
    assert not (tmp_path / "out").exists()  # nothing written for a bad set


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="has no rows"):
        write_local_task(rows(tmp_path, ""), folder=tmp_path)
    with pytest.raises(DataError, match="not found"):
        write_local_task(tmp_path / "nope.jsonl", folder=tmp_path)


def test_without_lm_eval_the_error_says_how_to_install():
    import importlib.util

    from lorakit.eval.benchmarks import plan_benchmarks

    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval is installed here")
    with pytest.raises(ResourceError) as caught:
        plan_benchmarks([str(EXAMPLES / "mc-facts.jsonl")])
    assert "lorakit[eval]" in caught.value.hint
