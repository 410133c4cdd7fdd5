"""Released chat templates through lorakit's real data path: the survey and the README's family table.

    python bench/chat_templates.py                 # the family table (README): masks, stop token, Ollama template
    python bench/chat_templates.py --survey DIR    # every DIR/*.jinja (llama.cpp's models/templates) on the
                                                   # bundled chats: data check, stop token, masks, or the refusal

Tokenizers are the families' real ones (llama.cpp's ggml-vocab-*.gguf, `make real-assets`) or the closest real one
with the template's special tokens added; `--tiny` uses lorakit's tiny built-in tokenizer instead (no assets).
"Masks ok" is measured against each family's own output format (tests/families.py): for a one-turn chat, a two-turn
chat and, where the template renders tools, a tool call with its result, the trained tokens must be exactly what the
model writes after its generation prompt, through its stop token, and nothing of system, user or tool turns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import families as fam  # noqa: E402

CHATS = REPO / "examples" / "data" / "chat-messages.jsonl"
TOOL_CHATS = REPO / "examples" / "data" / "tool-calls.jsonl"


def canonical(messages: list[dict], tools: list[dict] | None = None) -> dict:
    """A chat in lorakit's canonical row shape (data/formats.py), as `data check` would produce it."""
    extras = [{k: v for k, v in m.items() if k not in ("role", "content")} for m in messages]
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "train_from": 0,
            "prompt": "", "completion": "", "extras": json.dumps(extras) if any(extras) else "",
            "tools": json.dumps(tools) if tools else ""}


def trained_segments(tokenizer, example: dict) -> list[str]:
    segments, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            current.append(token)
        elif current:
            segments.append(tokenizer.decode(current))
            current = []
    if current:
        segments.append(tokenizer.decode(current))
    return segments


def matches(segment: str, expected: str) -> bool:
    """A trained segment is the expected output; a first token that also holds the end of the prompt (a newline
    merged with the output's first newline, as R1's '<think>\\n' + '\\n</think>') counts as the output's."""
    if segment == expected:
        return True
    return segment.endswith(expected[1:]) and expected[0] in "\n " and segment[: len(segment) - len(expected) + 1].strip() == ""


def expected_output(family: fam.Family, reply: str) -> str:
    return family.output.replace(fam.REPLY, reply)


def check_masks(family: fam.Family, tokenizer) -> tuple[bool, str]:
    """(ok, why not) for the family's one-turn, two-turn and tool chats."""
    from lorakit.chat_template import stop_convention
    from lorakit.data.tokenize import encode_row

    convention = stop_convention(tokenizer)
    cases = [("one turn", fam.chat(system=family.system), None, [fam.REPLY]),
             ("two turns", fam.two_turns(system=family.system), None, ["Paris.", "Berlin."])]
    if family.tools:
        cases.append(("tool call", fam.tool_chat(), [fam.WEATHER_TOOL],
                      [None, "It is 18 degrees and sunny in Paris."]))
    for label, messages, tools, replies in cases:
        examples = encode_row(canonical(messages, tools), tokenizer, "assistant", 8192, convention)
        errors = [e["error"] for e in examples if e["error"]]
        if errors:
            return False, f"{label}: {errors[0]}"
        segments = [s for e in examples for s in trained_segments(tokenizer, e)]
        if len(segments) != len(replies):
            return False, f"{label}: {len(segments)} trained segments for {len(replies)} assistant turns: {segments}"
        untrained = {m["content"] for m in messages if m["role"] != "assistant" and len(m["content"]) > 3}
        for reply in replies:
            if reply is None:  # the tool call: its name and arguments, ending in a stop token, nothing of the result
                segment = next((s for s in segments if "get_weather" in s), None)
                if segment is None or not any(segment.endswith(t) for t in convention.stop_tokens):
                    return False, f"{label}: the tool call is not trained through a stop token: {segments}"
                if "18 degrees" in segment:
                    return False, f"{label}: the tool result is trained: {segment!r}"
                continue
            want = expected_output(family, reply)
            if not any(matches(s, want) for s in segments):
                return False, f"{label}: expected {want!r} trained, got {segments}"
        leaked = [u for u in untrained for s in segments if u in s and not any(u in (r or "") for r in replies)]
        if leaked:
            return False, f"{label}: prompt text is trained: {leaked[0]!r}"
    return True, ""


def family_row(family: fam.Family, real: bool) -> dict:
    from lorakit.chat_template import stop_convention
    from lorakit.errors import LorakitError
    from lorakit.export.modelfile import modelfile

    tokenizer = fam.family_tokenizer(family, real=real)
    row = {"family": family.name, "template": family.template,
           "vocab": (family.vocab + ("" if family.own_vocab else " + template specials")) if real else "tiny + specials"}
    if tokenizer is None:
        return {**row, "masks": "skipped (no assets)", "stop": "", "ollama": ""}
    try:
        convention = stop_convention(tokenizer)
        ok, why = check_masks(family, tokenizer)
        row["masks"] = "yes" if ok else f"NO: {why}"
        row["stop"] = convention.token + (" (next turn's opener)" if convention.how == "next-turn" else "")
        if convention.tool_call_token:
            row["stop"] += f", tool calls {convention.tool_call_token}"
    except LorakitError as exc:
        row["masks"], row["stop"] = f"refused: {exc.message}", ""
    try:
        _, ollama_family = modelfile("model.gguf", tokenizer.chat_template, tokenizer=tokenizer)
        row["ollama"] = ollama_family
    except LorakitError as exc:
        row["ollama"] = f"no: {exc.message}"
    return row


def data_check(tokenizer, path: Path, **data) -> str:
    """lorakit's real data path (tokenize + lint) on a file: 'ok' or the one-line error."""
    from lorakit.config import DataSection
    from lorakit.data.sft import tokenize_source
    from lorakit.errors import LorakitError

    try:
        tokenized, *_ = tokenize_source(str(path), DataSection(train=str(path), **data), tokenizer)
    except LorakitError as exc:
        return f"FAIL: {exc.message}"
    except Exception as exc:  # a crash is a bug, recorded as such
        return f"CRASH {type(exc).__name__}: {exc}"
    return f"ok ({len(tokenized)} examples)"


def survey(folder: Path, real: bool) -> list[dict]:
    from lorakit.chat_template import stop_convention
    from lorakit.errors import LorakitError

    rows = []
    for path in sorted(folder.glob("*.jinja")):
        family = fam.guess_family(path)
        tokenizer = fam.family_tokenizer(family, real=real)
        row = {"template": path.name, "vocab": family.vocab if real else "tiny"}
        try:
            row["stop"] = stop_convention(tokenizer).describe()
        except LorakitError as exc:
            row["stop"] = f"refused: {exc.message}"
        row["chats"] = data_check(tokenizer, CHATS)
        row["tool chats"] = data_check(tokenizer, TOOL_CHATS)
        rows.append(row)
        print(f"| {' | '.join(str(v) for v in row.values())} |", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[k]).replace("|", "\\|").replace("\n", "\\n") for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", type=Path, help="a folder of .jinja templates (all of them are surveyed)")
    parser.add_argument("--tiny", action="store_true", help="lorakit's tiny tokenizer instead of the real vocabs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("LORAKIT_CACHE", tempfile.mkdtemp(prefix="lorakit-bench-"))
    real = not args.tiny
    if real and fam.models_dir() is None:
        print(f"the real tokenizers are not fetched: {fam.FETCH}; or pass --tiny", file=sys.stderr)
        return 1
    if args.survey:
        rows = survey(args.survey, real)
    else:
        rows = [family_row(f, real) for f in fam.FAMILIES]
    print(json.dumps(rows, indent=1, ensure_ascii=False) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
