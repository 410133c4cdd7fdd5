"""Every supervised format converts to the same canonical conversation, and bad rows are named."""

import json

import pytest

from lorakit.data.formats import load_sft_examples
from lorakit.data.load import load_rows
from lorakit.errors import DataError

from ..conftest import EXAMPLES


def convert(path, fmt="auto", columns=None, system_prompt=None):
    examples, detected = load_sft_examples(load_rows(str(path)), fmt, columns or {}, system_prompt)
    return [dict(row) for row in examples], detected


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("chat-messages.jsonl", "messages"),
        ("chat-messages.parquet", "messages"),
        ("chat-sharegpt.json", "sharegpt"),
        ("alpaca.json", "alpaca"),
        ("prompt-completion.jsonl", "prompt_completion"),
        ("prompt-completion.csv", "prompt_completion"),
        ("text.jsonl", "text"),
    ],
)
def test_bundled_files_are_detected(name, fmt):
    rows, detected = convert(EXAMPLES / name)
    assert detected == fmt
    assert len(rows) >= 40


def test_sharegpt_maps_roles_to_the_same_conversation_as_messages():
    sharegpt, _ = convert(EXAMPLES / "chat-sharegpt.json")
    first = sharegpt[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[1]["content"] == "What is the capital of France?"
    assert first[2]["content"] == "The capital of France is Paris."


def test_alpaca_joins_instruction_and_input():
    rows, _ = convert(EXAMPLES / "alpaca.json")
    assert rows[0]["messages"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    with_input = rows[-1]["messages"]
    assert with_input[0]["content"].startswith("Answer the question.\n\nWhat is")


def test_prompt_completion_strings_stay_raw_and_message_lists_train_only_the_completion():
    raw, _ = convert(EXAMPLES / "prompt-completion.csv")
    assert raw[0]["messages"] == [] and raw[0]["prompt"].startswith("Question:") and raw[0]["completion"]
    chat, _ = convert(EXAMPLES / "prompt-completion.jsonl")
    assert chat[0]["train_from"] == 1 and [m["role"] for m in chat[0]["messages"]] == ["user", "assistant"]


def test_system_prompt_is_added_and_shifts_the_trained_turns(tmp_path):
    rows, _ = convert(EXAMPLES / "prompt-completion.jsonl", system_prompt="Be brief.")
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert rows[0]["train_from"] == 2
    rows, _ = convert(EXAMPLES / "chat-messages.jsonl", system_prompt="Be brief.")
    # Rows that already have a system prompt keep theirs.
    assert rows[0]["messages"][0]["content"].startswith("You are a helpful assistant")
    assert rows[1]["messages"][0]["content"] == "Be brief."


def test_column_mapping_and_forced_format(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"dialog": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
                    + "\n")
    rows, fmt = convert(path, columns={"messages": "dialog"})
    assert fmt == "messages" and rows[0]["messages"][1]["content"] == "b"
    with pytest.raises(DataError, match="data.columns names column\\(s\\) 'nope'"):
        convert(path, columns={"messages": "nope"})


def write_jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_rows_are_reported_together_by_row_number(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows = [
        good,
        {"messages": [{"role": "user", "content": "q"}]},
        good,
        {"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
    ]
    with pytest.raises(DataError) as info:
        convert(write_jsonl(tmp_path, rows))
    message = info.value.message
    assert "3 bad rows" in message
    assert "row 2: no assistant turn" in message
    assert "row 4: messages[0].role 'bot'" in message
    assert "row 5: assistant turn 1 is empty" in message


def test_unknown_format_names_the_columns(tmp_path):
    with pytest.raises(DataError, match=r"cannot tell the data format from columns \['answer', 'question'\]"):
        convert(write_jsonl(tmp_path, [{"question": "q", "answer": "a"}]))


def test_forced_format_with_missing_columns(tmp_path):
    with pytest.raises(DataError, match="format 'alpaca' needs column\\(s\\) instruction, output"):
        convert(write_jsonl(tmp_path, [{"text": "hello"}]), fmt="alpaca")


def test_empty_and_missing_values(tmp_path):
    with pytest.raises(DataError, match="row 2: 'text' is empty"):
        convert(write_jsonl(tmp_path, [{"text": "ok"}, {"text": ""}]))
    with pytest.raises(DataError, match="row 1: 'output' is missing"):
        convert(write_jsonl(tmp_path, [{"instruction": "q", "output": None}, {"instruction": "q", "output": "a"}]))


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"broken.jsonl line 2: malformed JSON"):
        load_rows(str(path))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_rows(str(tmp_path / "data.txt"))


def test_a_missing_relative_file_is_not_taken_for_a_hub_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data file bad/missing.jsonl not found"):
        load_rows("bad/missing.jsonl")


@pytest.mark.parametrize("name,text", [("blank.jsonl", "\n\n"), ("list.json", "[]"), ("header.csv", "prompt,completion\n")])
def test_files_without_rows(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match="has no rows"):
        load_rows(str(tmp_path / name))


def test_a_folder_of_files_is_one_dataset(tmp_path):
    write_jsonl(tmp_path, [{"text": "a"}], "part1.jsonl")
    write_jsonl(tmp_path, [{"text": "b"}, {"text": "c"}], "part2.jsonl")
    loaded = load_rows(str(tmp_path))
    assert sorted(loaded.dataset["text"]) == ["a", "b", "c"]


def test_preference_pairs_given_as_sft_data_point_to_dpo(tmp_path):
    from lorakit.data.formats import SFT_SIGNATURES, detect_format

    with pytest.raises(DataError) as refused:
        detect_format(["prompt", "chosen", "rejected"], SFT_SIGNATURES, "prefs.jsonl")
    assert "lorakit dpo" in refused.value.hint and "--stage dpo" in refused.value.hint
