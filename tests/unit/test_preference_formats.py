"""Every preference format becomes the same canonical conversation; bad pairs are named by row."""

import json

import pytest

from lorakit.data.load import load_rows
from lorakit.data.preference import load_preference_examples
from lorakit.errors import DataError

from ..conftest import EXAMPLES


def convert(path, fmt="auto", system_prompt=None):
    examples, detected = load_preference_examples(load_rows(str(path)), fmt, {}, system_prompt)
    return [dict(r) for r in examples], detected


def without_system(rows):
    return [{"prompt": [m for m in r["prompt"] if m["role"] != "system"], "chosen": r["chosen"],
             "rejected": r["rejected"]} for r in rows]


def test_every_bundled_format_converts_to_the_same_pairs():
    reference, fmt = convert(EXAMPLES / "prefs.jsonl")
    assert fmt == "preference"
    assert reference[0] == {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
        "rejected": [{"role": "assistant", "content": reference[0]["rejected"][0]["content"]}],
    }
    for name, expected_format in [("prefs-ultrafeedback.jsonl", "preference"),
                                  ("prefs-implicit.jsonl", "implicit_preference"),
                                  ("prefs-hh.jsonl", "hh"),
                                  ("prefs-sqcr.jsonl", "system_question")]:
        rows, fmt = convert(EXAMPLES / name)
        assert fmt == expected_format, name
        assert without_system(rows) == reference, name
    sqcr, _ = convert(EXAMPLES / "prefs-sqcr.jsonl")
    assert sqcr[0]["prompt"][0]["role"] == "system"


def write(tmp_path, rows):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multi_turn_implicit_prompt_keeps_the_shared_turns(tmp_path):
    shared = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    rows, _ = convert(write(tmp_path, [{"chosen": shared + [{"role": "assistant", "content": "good"}],
                                        "rejected": shared + [{"role": "assistant", "content": "bad"}]}]))
    assert rows[0]["prompt"] == shared
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "good"}]


def test_hh_multi_turn(tmp_path):
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: capital of Peru?\n\nAssistant: "
    rows, fmt = convert(write(tmp_path, [{"chosen": text + "Lima.", "rejected": text + "Paris."}]))
    assert fmt == "hh"
    assert [m["content"] for m in rows[0]["prompt"]] == ["hi", "hello", "capital of Peru?"]
    assert rows[0]["chosen"][0]["content"] == "Lima."


def test_system_prompt_is_added(tmp_path):
    rows, _ = convert(EXAMPLES / "prefs.jsonl", system_prompt="Be brief.")
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_bad_pairs_are_reported_by_row(tmp_path):
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": None},
    ]
    with pytest.raises(DataError) as info:
        convert(write(tmp_path, rows))
    message = info.value.message
    assert "3 bad rows" in message
    assert "row 2: chosen and rejected are identical" in message
    assert "row 3: 'chosen' is empty" in message
    assert "row 4: 'rejected' is missing" in message


def test_missing_columns(tmp_path):
    with pytest.raises(DataError, match="cannot tell the data format"):
        convert(write(tmp_path, [{"prompt": "q", "good": "a", "bad": "b"}]))
    with pytest.raises(DataError, match="is a supervised format"):
        convert(write(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}]), fmt="messages")
