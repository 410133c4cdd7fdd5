"""Tool calling as a data format: OpenAI-style tools, assistant tool_calls and tool results, validated by row."""

from __future__ import annotations

import json

import pytest

from lorakit.config import DataSection
from lorakit.data.formats import load_sft_examples, load_tools, template_messages
from lorakit.data.load import load_rows
from lorakit.data.sft import tokenize_source
from lorakit.errors import DataError

from .. import families as fam
from ..conftest import EXAMPLES

TOOLS = EXAMPLES / "tool-calls.jsonl"


def convert(path, tools=None):
    rows, fmt = load_sft_examples(load_rows(str(path)), "auto", {}, None, tools)
    return [dict(r) for r in rows], fmt


def write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_example_file_converts_to_template_messages():
    rows, fmt = convert(TOOLS)
    assert fmt == "messages" and len(rows) == 6
    first = template_messages(rows[0])
    assert [m["role"] for m in first] == ["user", "assistant", "tool", "assistant"]
    call = first[1]["tool_calls"][0]
    assert call == {"type": "function", "id": "call00001",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert first[2]["tool_call_id"] == "call00001" and first[2]["name"] == "get_weather"
    second = template_messages(rows[1])
    # OpenAI's string arguments are decoded (templates expect a mapping), a null content becomes "", and a JSON
    # tool result is written as JSON text.
    assert second[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Berlin"}
    assert second[2]["content"] == ""
    assert json.loads(second[3]["content"]) == {"condition": "rain", "temperature_c": 9}
    assert json.loads(rows[2]["tools"])[1]["function"]["name"] == "convert_currency"


def test_dataset_wide_tools_fill_rows_without_their_own(tmp_path):
    spec = [{"name": "lookup", "description": "Look a word up", "parameters": {"type": "object", "properties": {}}}]
    (tmp_path / "tools.json").write_text(json.dumps(spec))
    tools = load_tools(str(tmp_path / "tools.json"))
    assert tools == [{"type": "function", "function": spec[0]}]
    path = write(tmp_path, [{"messages": [
        {"role": "user", "content": "Define cat"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "lookup", "arguments": "{\"word\": \"cat\"}"}}]},
        {"role": "tool", "content": "a small animal"},
        {"role": "assistant", "content": "A cat is a small animal."}]}])
    rows, _ = convert(path, tools)
    assert json.loads(rows[0]["tools"]) == tools
    with pytest.raises(DataError, match="data.tools file .* not found"):
        load_tools(str(tmp_path / "missing.json"))


def test_bad_tool_rows_are_reported_together_by_row_number(tmp_path):
    user = {"role": "user", "content": "q"}
    tools = [fam.WEATHER_TOOL]
    rows = [
        {"tools": tools, "messages": fam.tool_chat()},
        {"tools": tools, "messages": [user, {"role": "assistant", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}]},
        {"tools": tools, "messages": [user, {"role": "assistant", "tool_calls": [
            {"function": {"name": "get_time", "arguments": {}}}]}]},
        {"tools": tools, "messages": [user, {"role": "tool", "content": "18C"}, {"role": "assistant", "content": "a"}]},
        {"tools": tools, "messages": [user, {"role": "assistant", "tool_calls": [
            {"id": "call00001", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "tool_call_id": "call00009", "content": "2C"}, {"role": "assistant", "content": "Cold."}]},
        {"tools": tools, "messages": [{"role": "user", "content": "q", "tool_calls": [
            {"function": {"name": "get_weather"}}]}, {"role": "assistant", "content": "a"}]},
        {"tools": tools, "messages": [user, {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
        {"tools": "not json", "messages": [user, {"role": "assistant", "content": "a"}]},
    ]
    with pytest.raises(DataError) as info:
        convert(write(tmp_path, rows))
    message = info.value.message
    assert "7 bad rows" in message
    assert "row 2: messages[1].tool_calls[0].function.arguments is not valid JSON" in message
    assert "row 3: assistant turn 1 calls 'get_time', which is not among the tools offered (get_weather)" in message
    assert "row 4: tool message 1 answers no tool call" in message
    assert "row 5: tool message 2 answers tool_call_id 'call00009', which no preceding call has (call00001)" in message
    assert "row 6: messages[0] is a user message with tool_calls" in message
    assert "(and 2 more)" in message  # rows 7 (no function name) and 8 (tools not JSON), listed by data check


def test_tool_calls_are_refused_in_preference_data(tmp_path):
    from lorakit.data.preference import load_preference_examples

    row = {"prompt": [{"role": "user", "content": "q"}],
           "chosen": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}],
           "rejected": [{"role": "assistant", "content": "no"}]}
    with pytest.raises(DataError, match="tool calling is supported in supervised"):
        load_preference_examples(load_rows(str(write(tmp_path, [row]))), "auto", {}, None)


def test_rendered_like_trl_renders_them():
    """The text lorakit trains on is the model's template applied the way TRL applies it to a row with tools."""
    from trl.data_utils import apply_chat_template

    from lorakit.chat_template import render

    family = fam.BY_NAME["Qwen2.5"]
    tokenizer = fam.family_tokenizer(family, real=False)
    rows, _ = convert(TOOLS)
    for row in rows:
        messages, tools = template_messages(row), json.loads(row["tools"])
        trl_text = apply_chat_template({"messages": messages}, tokenizer, tools=tools)["text"]
        assert render(tokenizer, messages, tools=tools) == trl_text


def test_tool_results_never_carry_the_loss():
    family = fam.BY_NAME["Qwen2.5"]
    tokenizer = fam.family_tokenizer(family, real=False)
    tokenized, _, _, _ = tokenize_source(str(TOOLS), DataSection(train=str(TOOLS)), tokenizer,
                                         stops=fam.family_stops(family, tokenizer))
    segments = [fam.trained_segments(tokenizer, e) for e in tokenized]
    assert segments[0] == ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                           "It is 18 degrees and sunny in Paris.<|im_end|>"]
    # A row that ends with a call trains the call through the stop token: the model hands over to the tool there.
    assert segments[4] == ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>']
    assert not any("18 degrees, sunny" in s or "<tool_response>" in s for seg in segments for s in seg)
