"""lorakit eval --tasks: lm-evaluation-harness on tiny runs with the bundled local question set, offline."""

import json
import shutil

import pytest

from lorakit.errors import ConfigError, DataError
from lorakit.eval.run import run_eval

from ..conftest import EXAMPLES, REPO, sft_recipe
from ..helpers import assert_clean_error, invoke
from ..report_checks import read_page

pytest.importorskip("lm_eval", reason="pip install 'lorakit[eval]' runs the benchmark tests")

MC = EXAMPLES / "mc-facts.jsonl"  # the example chats' questions, each with its answer and three wrong ones


@pytest.fixture()
def sft_copy(sft_run, tmp_path):
    """The shared SFT run, copied: eval writes eval.json and report.html into what it scores."""
    return shutil.copytree(sft_run.path, tmp_path / "sft", ignore=shutil.ignore_patterns("checkpoints"))


def test_a_local_task_scores_the_sft_run_above_its_base_and_is_stored(sft_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # where the run's recipe finds its training data (for the contamination check)
    # the same questions through a task file of the user's own, in lm-eval's format, raw prompt
    own = tmp_path / "my_task.yaml"
    own.write_text(f"task: my_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {MC}\n"
                   "test_split: test\noutput_type: multiple_choice\n"
                   "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\n"
                   "doc_to_target: answer\nmetric_list:\n  - metric: acc\n")
    report = run_eval([sft_copy], tasks=[str(MC)], task_files=[str(own)])
    by_kind = {c["kind"]: c for c in report["candidates"]}
    base, sft = by_kind["base"], by_kind["sft"]
    assert sft["mc_facts/acc"] >= 0.6 and sft["mc_facts/acc"] >= base["mc_facts/acc"] + 0.3
    assert {"mc_facts/acc_norm", "my_mc/acc"} <= set(sft)
    detail = sft["benchmarks"]["mc_facts"]
    assert detail["samples"] == 44 and detail["chat_template"] is True and detail["num_fewshot"] == 0
    assert sft["benchmarks"]["my_mc"]["chat_template"] is False  # lm-eval's own format: raw text, as it scores it
    assert 0 < detail["stderr"]["acc"] < 0.2
    verdicts = {r["metric"]: r for r in report["regressions"] if r["candidate"] == str(sft_copy.resolve())}
    assert not verdicts["mc_facts/acc"]["worse"] and verdicts["mc_facts/acc"]["parent"] == "base"
    saved = json.loads((sft_copy / "eval.json").read_text())
    assert saved["candidates"] == report["candidates"]
    assert [t["name"] for t in saved["benchmarks"]["tasks"]] == ["my_mc", "mc_facts"]
    # mc-facts asks the example chats' own questions: eval says the run trained on them, naming the rows
    [contaminated] = saved["contamination"]
    assert contaminated["rows"] == contaminated["of"] == 50
    assert set(contaminated["benchmarks"]) <= {str(MC), str(own)} and contaminated["examples"][0]["row"] == 1
    # report.html was redrawn with the scores, this run's row marked
    page = read_page((sft_copy / "report.html").read_text())
    assert f"{sft['mc_facts/acc']:.4f}" in page.cells and f"{base['mc_facts/acc']:.4f}" in page.cells


def test_a_run_trained_on_wrong_answers_fails_the_regression_gate(tmp_path, monkeypatch):
    from lorakit.train.sft import run_sft

    wrong = tmp_path / "wrong.jsonl"
    with wrong.open("w") as handle:
        for line in MC.read_text().splitlines():
            row = json.loads(line)
            answer = row["choices"][(row["answer"] + 1) % len(row["choices"])]  # always a wrong choice
            handle.write(json.dumps({"messages": [{"role": "user", "content": row["question"]},
                                                  {"role": "assistant", "content": answer}]}) + "\n")
    monkeypatch.chdir(REPO)
    run = run_sft(sft_recipe(tmp_path / "wrong-sft", f"data.train={wrong}", "data.eval=null", max_steps=60))
    result = invoke("eval", run.path, "--tasks", MC, "--fail-on-regression")
    assert_clean_error(result, "regression", "mc_facts/acc", str(run.path.resolve()))
    saved = json.loads((run.path / "eval.json").read_text())
    scores = {c["kind"]: c["mc_facts/acc"] for c in saved["candidates"]}
    assert scores["sft"] < scores["base"]
    assert all(r["worse"] for r in saved["regressions"] if r["metric"].startswith("mc_facts/"))


@pytest.mark.slow  # trains nothing, but lm-eval indexes its ~15,000 built-in task files first (20-70 s)
def test_task_names_are_checked_before_any_model_loads():
    from lorakit.eval.benchmarks import plan_benchmarks

    with pytest.raises(ConfigError) as typo:
        plan_benchmarks(["hellasvag"])
    assert "did you mean hellaswag" in typo.value.message
    # a real task whose data lives on the hub: offline (the tests' HF_HUB_OFFLINE), one line naming it
    with pytest.raises(DataError) as offline:
        plan_benchmarks(["arc_easy"])
    assert offline.value.message.startswith("task arc_easy needs its dataset from the Hugging Face hub")
    assert "--tasks" in offline.value.hint and "jsonl" in offline.value.hint


def test_cli_errors_for_tasks_are_clean(sft_copy, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    assert_clean_error(invoke("eval", sft_copy, "--tasks", bad), "bad.jsonl:1: 'answer' 5 is neither an index")
    assert_clean_error(invoke("eval", sft_copy, "--task-file", tmp_path / "none.yaml"), "none.yaml not found")
    assert_clean_error(invoke("eval", sft_copy, "--tasks", MC, "--chat-template", "maybe"),
                       "--chat-template 'maybe' is not one of auto, on, off")
