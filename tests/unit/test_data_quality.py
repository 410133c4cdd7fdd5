"""The data screen: planted exact and re-worded duplicates, eval repeats, equal answers and benchmark rows are found
with known counts and rows (and distinct rows are not); what the recipe drops; bad --against files and thresholds."""

from __future__ import annotations

import json
import random

import pytest

from lorakit.config import DataSection, load_recipe
from lorakit.data.preference import canonical_pairs, screen_preference_data
from lorakit.data.sft import canonical_rows, screen_sft_data
from lorakit.errors import ConfigError, DataError

from ..helpers import assert_clean_error, invoke

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti", "va", "ze") for b in
         ("bar", "cel", "dom", "fin", "gat", "hul", "jor", "kep", "lin", "mos", "nap", "pir")]


def distinct_reply(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def reword(text: str, rng: random.Random) -> str:
    """The same reply with three words changed and a phrase added: a near-duplicate, not a copy."""
    words = text.rstrip(".").split()
    for i in rng.sample(range(len(words)), 3):
        words[i] = rng.choice(WORDS)
    return "Well, " + " ".join(words) + " indeed."


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def planted(tmp_path):
    """30 distinct chats, then: 3 exact copies (case, punctuation and spacing changed), 2 re-worded copies, 1 copy
    of an eval row and 1 re-worded eval row, and 10 templated facts that share most words but are distinct."""
    rng = random.Random(7)
    base = [chat(f"Question {i}: tell me about {rng.choice(WORDS)}?", distinct_reply(rng)) for i in range(30)]
    evaluation = [chat(f"Held-out question {i} on {rng.choice(WORDS)}?", distinct_reply(rng)) for i in range(5)]
    templated = [chat(f"What is the capital of {country}?", f"The capital of {country} is {city}.")
                 for country, city in [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"),
                                       ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chile", "Santiago"),
                                       ("Kenya", "Nairobi"), ("Cuba", "Havana"), ("Egypt", "Cairo")]]
    exact = []
    for source in (base[2], base[5], base[11]):
        user, reply = source["messages"][0]["content"], source["messages"][1]["content"]
        exact.append(chat(user.upper(), "  " + reply.replace(".", "!").replace(" ", "   ") + " "))
    near = [chat(base[i]["messages"][0]["content"], reword(base[i]["messages"][1]["content"], rng)) for i in (3, 17)]
    eval_copy = dict(evaluation[1])
    eval_near = chat(evaluation[3]["messages"][0]["content"], reword(evaluation[3]["messages"][1]["content"], rng))
    rows = base + templated + exact + near + [eval_copy, eval_near]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", evaluation)
    return {"train": train, "eval": test, "rows": rows, "n_base": len(base), "n_templated": len(templated)}


def screen(path, **settings):
    data = DataSection(train=path, **settings)
    return screen_sft_data(data, canonical_rows(path, data)[0])


def test_planted_duplicates_are_found_with_known_counts_and_rows(planted):
    found = screen(planted["train"], eval=planted["eval"])
    first_exact = planted["n_base"] + planted["n_templated"]  # 0-based row of the first planted exact copy
    assert [(m.row, m.other) for m in found.exact] == [(first_exact, 2), (first_exact + 1, 5), (first_exact + 2, 11)]
    assert [(m.row, m.other) for m in found.near] == [(first_exact + 3, 3), (first_exact + 4, 17)]
    assert all(0.6 <= m.similarity < 1 for m in found.near)
    assert sorted((m.row, m.other, m.exact) for m in found.in_eval) == [
        (first_exact + 5, 1, True), (first_exact + 6, 3, False)]
    # the distinct rows, the templated facts among them, are not duplicates of anything
    flagged = {m.row for m in found.exact + found.near + found.in_eval}
    assert flagged == set(range(first_exact, len(planted["rows"])))
    # the eval row's exact copy also contains it (13-gram check); its re-worded copy keeps too few of its 13-grams
    assert found.counts() == {"exact_duplicates": 3, "near_duplicates": 2, "eval_duplicates": 2, "same_answers": 0,
                              "contaminated": 1, "dropped": 0}
    assert [c.row for c in found.contaminated] == [first_exact + 5]


def test_exact_drops_exact_copies_and_near_drops_the_rest(planted):
    first = planted["n_base"] + planted["n_templated"]
    exact = screen(planted["train"], eval=planted["eval"], dedup="exact")
    assert sorted(exact.dropped) == [first, first + 1, first + 2, first + 5]
    near = screen(planted["train"], eval=planted["eval"], dedup="near")
    assert sorted(near.dropped) == list(range(first, first + 7))
    assert near.record()["dropped_rows"] == {"exact duplicate": [first + 1, first + 2, first + 3],
                                             "near-duplicate": [first + 4, first + 5],
                                             "repeats an eval row": [first + 6, first + 7]}
    assert screen(planted["train"], eval=planted["eval"], dedup="off").duplicates is None


def test_a_stricter_threshold_keeps_the_reworded_rows_apart(planted):
    assert screen(planted["train"], dedup_threshold=0.95).near == []


def test_benchmark_rows_inside_training_rows_are_found(tmp_path, planted):
    benchmark = write_jsonl(tmp_path / "bench.jsonl", [
        {"question": "Which river flows through the city of Vienna?", "choices": ["Danube", "Rhine"], "answer": 0},
        {"question": "What is the boiling point of water at sea level in Celsius?", "answer": "100"},
        {"question": "Name the largest planet of the solar system.", "answer": "Jupiter"},
        {"passage": " ".join(WORDS[:30]), "question": "Which word comes first?"},
    ])
    rows = [chat("Hello there, how are you?", "Fine, thank you.")] * 3
    rows[1] = chat("Quiz time! What is the boiling point of water at sea level in Celsius? Answer briefly.", "100.")
    rows.append(chat("Copy this: " + " ".join(WORDS[5:25]), "Done."))  # 20 of the passage's 30 words: 8 of 18 grams
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    found = screen(train, contamination_against=[benchmark], dedup="off")
    assert [(c.row, c.benchmark.row, c.overlap) for c in found.contaminated] == [(1, 2, 1.0)]
    assert found.contaminated[0].benchmark.text.startswith("What is the boiling point")
    anywhere = screen(train, contamination_against=[benchmark], dedup="off", contamination_threshold=0.0)
    assert [(c.row, c.benchmark.row) for c in anywhere.contaminated] == [(1, 2), (3, 4)]
    assert anywhere.contaminated[1].overlap == pytest.approx(8 / 19, abs=0.01)
    dropped = screen(train, contamination_against=[benchmark], dedup="off", decontaminate="drop")
    assert dropped.dropped == {1: "contains an eval/benchmark row"}


def test_preference_pairs_with_equal_answers_are_found(tmp_path):
    pairs = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
             {"prompt": "Capital of Spain?", "chosen": "Madrid.", "rejected": "madrid"},
             {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Paris."}]
    path = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    data = DataSection(train=path)
    found = screen_preference_data(data, canonical_pairs(path, data)[0])
    assert found.same_answers == [1]
    dropped = screen_preference_data(DataSection(train=path, dedup="exact"), canonical_pairs(path, data)[0])
    assert dropped.dropped == {1: "chosen equals rejected"}


def test_data_check_names_the_rows_and_what_they_match(planted, tmp_path):
    result = invoke("data", "check", planted["train"], "--set", f"data.eval={planted['eval']}", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exact duplicates"] == 3 and report["near duplicates"] == 2 and report["repeats of eval rows"] == 2
    first = planted["n_base"] + planted["n_templated"] + 1  # 1-based, as the report names rows
    exact = [f for f in report["findings"] if f["kind"] == "exact duplicate"]
    assert [(f["row"], f["matches"]) for f in exact] == [(first, "row 3"), (first + 1, "row 6"), (first + 2, "row 12")]
    assert exact[0]["text"].startswith("QUESTION 2") and exact[0]["matching_text"].startswith("Question 2")
    assert report["quality"]["near_rows_checked"] == len(planted["rows"])
    table = invoke("data", "check", planted["train"])
    assert table.exit_code == 0 and "exact duplicate" in table.output and "near-duplicate" in table.output


def test_against_a_missing_or_unsupported_file_is_one_clear_error(planted, tmp_path):
    assert_clean_error(invoke("data", "check", planted["train"], "--against", tmp_path / "nope.jsonl"),
                       "--against", "nope.jsonl", "not found")
    odd = tmp_path / "bench.xlsx"
    odd.write_bytes(b"PK\x03\x04")
    assert_clean_error(invoke("data", "check", planted["train"], "--against", odd), "unsupported file type '.xlsx'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine"}\n{"question": \n')
    assert_clean_error(invoke("data", "check", planted["train"], "--against", bad), "bad.jsonl line 2",
                       "malformed JSON")
    hub = tmp_path / "task.yaml"
    hub.write_text("task: x\ndataset_path: cais/mmlu\n")
    assert_clean_error(invoke("data", "check", planted["train"], "--against", hub), "not a local file")


def test_an_lm_eval_task_file_with_local_data_is_read(tmp_path, planted):
    rows = [json.loads(line) for line in open(planted["train"])]
    question = rows[4]["messages"][0]["content"]
    data = write_jsonl(tmp_path / "qs.jsonl", [{"question": question, "answer": "x"}])
    task = tmp_path / "task.yaml"
    task.write_text(f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    "test_split: test\n")
    found = screen(planted["train"], contamination_against=[str(task)], dedup="off")
    assert [c.row for c in found.contaminated] == [4]


def test_a_huge_line_is_refused_not_read(tmp_path, planted, monkeypatch):
    from lorakit.data import benchmark_files

    monkeypatch.setattr(benchmark_files, "MAX_LINE_BYTES", 1000)
    big = tmp_path / "big.jsonl"
    big.write_text('{"question": "' + "x" * 5000 + '"}\n')
    with pytest.raises(DataError, match="line 1: longer than"):
        screen(planted["train"], contamination_against=[str(big)], dedup="off")


@pytest.mark.parametrize("setting", ["data.dedup_threshold=0", "data.dedup_threshold=1.5",
                                     "data.contamination_threshold=-0.1", "data.contamination_threshold=2",
                                     "data.contamination_ngram=0", "data.dedup=fuzzy", "data.decontaminate=yes"])
def test_thresholds_out_of_range_are_recipe_errors(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_recipe("sft", None, [setting, "data.train=x.jsonl"])


def test_grpo_prompts_are_screened_for_repeats_and_near_duplicates_only_when_asked(tmp_path):
    from lorakit.data.prompts import canonical_prompts, screen_prompt_data

    # templated questions that differ in a number are different tasks, however alike their words
    questions = [f"What is {a} plus {b}? End your reply with 'Answer: ' and the number." for a, b in
                 [(1, 2), (3, 4), (5, 6), (7, 8)]]
    rows = [{"prompt": q, "answer": "0"} for q in questions] + [{"prompt": questions[1].upper(), "answer": "0"}]
    path = write_jsonl(tmp_path / "prompts.jsonl", rows)
    held_out = write_jsonl(tmp_path / "held-out.jsonl", [{"prompt": questions[2], "answer": "0"}])
    data = DataSection(train=path, eval=held_out)
    found = screen_prompt_data(data, canonical_prompts(path, data), canonical_prompts(held_out, data))
    assert [(m.row, m.other) for m in found.exact] == [(4, 1)] and not found.near
    assert [(m.row, m.other_set) for m in found.in_eval] == [(2, "eval")] and not found.dropped
    near = DataSection(train=path, eval=held_out, dedup="near")
    screened = screen_prompt_data(near, canonical_prompts(path, near), canonical_prompts(held_out, near))
    assert screened.near and set(screened.dropped) >= {2, 4}  # with near, the alike questions are dropped as asked
    result = invoke("data", "check", path, "--stage", "grpo", "--set", f"data.eval={held_out}", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["exact duplicates"] == 1 and report["near duplicates"].startswith("not checked")
