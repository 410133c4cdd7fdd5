"""The fuzz cases: malformed input of every kind lorakit takes, each with what its one error line must name.

A case builds its input in a fresh workspace (the current folder while it runs) and returns the command line.
Families: datasets in every file type, preference data, special paths, recipes, --set expressions, CLI values,
--force against inputs, damaged run folders (x every command that reads them), damaged interrupted runs (--resume),
damaged model folders, pipeline recipes and pipeline state. Values that vary (where a line breaks, where a file is
cut, which bytes replace it) come from the case's own seeded random stream, so every run of the suite is the same.
Every bug found by hand belongs here too: add a case.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .workspace import Workspace


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Workspace], list]  # makes the input in the workspace, returns the command line
    expect: tuple[str, ...] = ()  # what the error must name (a case may add seeded ones to ws.expected)


CASES: list[Case] = []


def add(case_id: str, build: Callable[[Workspace], list], *expect: str) -> None:
    assert case_id not in {c.id for c in CASES}, case_id
    CASES.append(Case(case_id, build, tuple(expect)))


def sft(data: str, *extra) -> Callable[[Workspace], list]:
    return lambda ws: ["sft", "--model", ws.model, "--data", data, "-o", "out", "--max-steps", "1", *extra]


def check(data: str, *extra) -> Callable[[Workspace], list]:
    return lambda ws: ["data", "check", data, *extra]


def with_file(name: str, make: Callable[[Workspace], str | bytes], command: Callable[[str], Callable]):
    def build(ws: Workspace) -> list:
        ws.write(name, make(ws))
        return command(name)(ws)

    return build


# ---------------------------------------------------------------------------------------------------------------
# Supervised datasets, every file type: (name, content maker, fragments), each through `data check` and `sft`.

def _lines_with(ws: Workspace, bad: str | bytes, n: int = 6) -> tuple[bytes, int]:
    """n good chat lines with `bad` at a seeded position; returns (bytes, its 1-based line)."""
    lines = [line.encode() for line in ws.chat_lines(n)]
    at = ws.rng.randrange(len(lines) + 1)
    lines.insert(at, bad if isinstance(bad, bytes) else bad.encode())
    return b"\n".join(lines) + b"\n", at + 1


def jsonl_case(label: str, bad: str | bytes, fragment: str) -> None:
    """A JSON Lines file with one bad line at a seeded position: the error names the file and that line."""
    for command, name in ((check, "data-check"), (sft, "sft")):
        def build(ws, command=command):
            content, line = _lines_with(ws, bad)
            ws.write("bad.jsonl", content)
            ws.expected = (f"bad.jsonl line {line}", fragment)
            return command("bad.jsonl")(ws)

        add(f"jsonl-{label}-{name}", build)


jsonl_case("truncated-object", '{"messages": [{"role": "user", "content": "q"', "malformed JSON")
jsonl_case("trailing-comma", '{"messages": [],}', "malformed JSON")
jsonl_case("single-quotes", "{'text': 'hi'}", "malformed JSON")
jsonl_case("bare-word", "hello", "malformed JSON")
jsonl_case("two-objects", '{"text": "a"} {"text": "b"}', "malformed JSON")
jsonl_case("control-char", '{"text": "a\x01b"}', "malformed JSON")
jsonl_case("bom", '\ufeff{"text": "a"}', "malformed JSON")
jsonl_case("list-row", '[{"text": "a"}]', "expected a JSON object, got a list")
jsonl_case("number-row", "42", "expected a JSON object, got a number")
jsonl_case("string-row", '"text"', "expected a JSON object, got a string")
jsonl_case("null-row", "null", "expected a JSON object, got null")
jsonl_case("bool-row", "true", "expected a JSON object, got a boolean")
jsonl_case("non-utf8", b'{"text": "caf\xe9"}', "not UTF-8")
jsonl_case("lone-surrogate-bytes", b'{"text": "\xed\xa0\x80"}', "not UTF-8")
jsonl_case("deep-nesting-5000", '{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply")
jsonl_case("deep-nesting-150", '{"a": ' + "[" * 150 + "]" * 150 + "}", "nested too deeply")
jsonl_case("deep-objects", '{"a": ' * 300 + "1" + "}" * 300, "nested too deeply")
jsonl_case("int-5000-digits", '{"text": "x", "n": ' + "7" * 5000 + "}", "integer too long")


def rows_case(label: str, make_row: Callable[[Workspace], dict], fragment: str, n: int = 5) -> None:
    """A valid JSON Lines file whose row at a seeded position is not a usable example: the error names the row."""
    for command, name in ((check, "data-check"), (sft, "sft")):
        def build(ws, command=command):
            lines = ws.chat_lines(n)
            at = ws.rng.randrange(len(lines) + 1)
            lines.insert(at, json.dumps(make_row(ws)))
            ws.write("rows.jsonl", "\n".join(lines) + "\n")
            ws.expected = ("rows.jsonl", f"row {at + 1}", fragment)
            return command("rows.jsonl")(ws)

        add(f"row-{label}-{name}", build)


USER = {"role": "user", "content": "Hi"}
rows_case("messages-string", lambda ws: {"messages": "hello"}, "non-empty list of messages")
rows_case("messages-empty", lambda ws: {"messages": []}, "non-empty list of messages")
rows_case("messages-number", lambda ws: {"messages": 7}, "non-empty list of messages")
rows_case("message-not-object", lambda ws: {"messages": [USER, "Hello"]}, "must be an object")
rows_case("role-unknown", lambda ws: {"messages": [USER, {"role": "robot", "content": "x"}]}, "is not one of")
rows_case("content-number", lambda ws: {"messages": [USER, {"role": "assistant", "content": 5}]}, "must be text")
rows_case("no-assistant", lambda ws: {"messages": [USER]}, "no assistant turn")
rows_case("empty-assistant", lambda ws: {"messages": [USER, {"role": "assistant", "content": "  "}]}, "is empty")
rows_case("system-late", lambda ws: {"messages": [USER, {"role": "assistant", "content": "a"},
                                                  {"role": "system", "content": "s"}]}, "must come first")
rows_case("messages-null", lambda ws: {"messages": None}, "")


def alpaca_case(label: str, row: dict, fragment: str) -> None:
    good = {"instruction": "What is 2 plus 2?", "input": "", "output": "4."}
    for command, name in ((check, "data-check"), (sft, "sft")):
        def build(ws, command=command):
            rows = [good] * 4
            at = ws.rng.randrange(5)
            rows = rows[:at] + [row] + rows[at:]
            ws.write("alpaca.json", json.dumps(rows))
            ws.expected = ("alpaca.json", f"row {at + 1}", fragment)
            return command("alpaca.json")(ws)

        add(f"alpaca-{label}-{name}", build)


alpaca_case("output-empty", {"instruction": "q", "input": "", "output": ""}, "'output' is empty")
alpaca_case("output-number", {"instruction": "q", "input": "", "output": 3}, "")
alpaca_case("instruction-list", {"instruction": ["q"], "input": "", "output": "a"}, "")


def file_case(label: str, name: str, make: Callable[[Workspace], str | bytes], *fragments: str,
              commands=((check, "data-check"), (sft, "sft"))) -> None:
    for command, cname in commands:
        add(f"file-{label}-{cname}", with_file(name, make, command), name, *fragments)


# .json
file_case("json-object", "data.json", lambda ws: '{"text": "a"}', "expected a JSON list, got an object")
file_case("json-number", "data.json", lambda ws: "5", "expected a JSON list, got a number")
file_case("json-list-of-strings", "data.json", lambda ws: '[{"text": "a"}, "b"]', "row 2", "got a string")
file_case("json-malformed", "data.json", lambda ws: '[{"text": "a"},\n {"text": }]', "line 2", "malformed JSON")
file_case("json-non-utf8", "data.json", lambda ws: b'[{"text": "\xff"}]', "not UTF-8")
file_case("json-deep", "data.json", lambda ws: "[" * 3000 + "]" * 3000, "nested too deeply")
file_case("json-big-int", "data.json", lambda ws: '[{"text": "a", "n": ' + "1" * 4400 + "}]", "integer too long")
file_case("json-empty-list", "data.json", lambda ws: "[]", "has no rows")
file_case("json-blank", "data.json", lambda ws: "   \n", "malformed JSON")
# .jsonl as a whole
file_case("jsonl-empty", "empty.jsonl", lambda ws: "", "is empty")
file_case("jsonl-blank-lines", "blank.jsonl", lambda ws: "\n\n  \n", "has no rows")
file_case("jsonl-unknown-columns", "odd.jsonl", lambda ws: '{"question": "q", "reply": "a"}\n',
          "cannot tell the data format")
file_case("jsonl-preference-as-sft", "pairs.jsonl", lambda ws: "\n".join(ws.pref_lines(3)) + "\n", "dpo")
# .csv
CSV_GOOD = 'prompt,completion\n"Q: 2+2?\nA:", 4.\n"Q: 3+3?\nA:", 6.\n'


def csv_with(ws: Workspace, bad: str) -> str:
    return CSV_GOOD + bad


file_case("csv-extra-field", "data.csv", lambda ws: csv_with(ws, "a,b,c\n"), "line 6", "3 field(s)")
file_case("csv-missing-field", "data.csv", lambda ws: csv_with(ws, "only\n"), "line 6", "1 field(s)")
file_case("csv-header-only", "data.csv", lambda ws: "prompt,completion\n", "has no rows")
file_case("csv-blank-lines", "data.csv", lambda ws: "\n\n", "has no rows")
file_case("csv-non-utf8", "data.csv", lambda ws: CSV_GOOD.encode() + b'"Q: caf\xe9", x\n', "not UTF-8", "line 6")
file_case("csv-nul-byte", "data.csv", lambda ws: csv_with(ws, 'a\x00,b\n'), "line 6", "NUL byte")
file_case("csv-unclosed-quote", "data.csv", lambda ws: csv_with(ws, '"never closed,b\n'), "malformed CSV")
file_case("csv-repeated-header", "data.csv", lambda ws: "prompt,prompt\na,b\n", "line 1", "repeated")
file_case("csv-empty-header-name", "data.csv", lambda ws: "prompt,\na,b\n", "line 1", "empty")
file_case("csv-unknown-columns", "data.csv", lambda ws: "q,a\nx,y\n", "cannot tell the data format")
file_case("csv-empty-completion", "data.csv", lambda ws: 'prompt,completion\n"Q?",\n"Q2?",a\n', "row 1")


# .parquet
def parquet(ws: Workspace, columns: dict | None = None, schema=None) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns) if schema is None else pa.Table.from_pylist([], schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def good_parquet(ws: Workspace) -> bytes:
    return parquet(ws, {"prompt": ["Q: 2+2?\nA:", "Q: 3+3?\nA:"] * 3, "completion": [" 4.", " 6."] * 3})


def cut(ws: Workspace, content: bytes) -> bytes:
    return content[: ws.rng.randrange(1, len(content) - 1)]


def random_bytes(ws: Workspace, n: int = 600) -> bytes:
    return bytes(ws.rng.randrange(256) for _ in range(n))


for seed in range(3):
    file_case(f"parquet-cut-{seed}", "data.parquet", lambda ws: cut(ws, good_parquet(ws)),
              "not a readable Parquet file")
    file_case(f"parquet-random-{seed}", "data.parquet", lambda ws: random_bytes(ws), "not a readable Parquet file")
file_case("parquet-is-json", "data.parquet", lambda ws: "\n".join(ws.chat_lines(2)), "not a readable Parquet file")


def _zero_rows(ws):
    import pyarrow as pa

    return parquet(ws, schema=pa.schema([("prompt", pa.string()), ("completion", pa.string())]))


file_case("parquet-zero-rows", "data.parquet", _zero_rows, "has no rows")
file_case("parquet-unknown-columns", "data.parquet", lambda ws: parquet(ws, {"q": ["a"], "r": ["b"]}),
          "cannot tell the data format")
file_case("parquet-int-text", "data.parquet", lambda ws: parquet(ws, {"text": [1, 2, 3]}), "row 1", "must be text")
file_case("parquet-empty-completion", "data.parquet",
          lambda ws: parquet(ws, {"prompt": ["a?", "b?"], "completion": ["x", ""]}), "row 2")
file_case("unsupported-suffix", "data.txt", lambda ws: "hello\n", "unsupported file type")
file_case("no-suffix", "data", lambda ws: "hello\n", "unsupported file type")


# ---------------------------------------------------------------------------------------------------------------
# Paths that are not data files

def special(label: str, make: Callable[[Workspace], str], *fragments: str) -> None:
    for command, name in ((check, "data-check"), (sft, "sft")):
        add(f"path-{label}-{name}", lambda ws, command=command: command(make(ws))(ws), *fragments)


def _fifo(ws):
    os.mkfifo(ws.root / "pipe.jsonl")
    return "pipe.jsonl"


def _loop(ws):
    os.symlink("loop.jsonl", ws.root / "loop.jsonl")
    return "loop.jsonl"


def _broken(ws):
    os.symlink("gone.jsonl", ws.root / "link.jsonl")
    return "link.jsonl"


def _folder(ws, files: dict[str, str]):
    for name, text in files.items():
        ws.write(f"folder/{name}", text)
    (ws.root / "folder").mkdir(exist_ok=True)
    return "folder"


def _fifo_in_folder(ws):
    (ws.root / "folder").mkdir()
    os.mkfifo(ws.root / "folder" / "x.jsonl")
    return "folder"


special("fifo", _fifo, "pipe.jsonl", "FIFO")
special("dev-null", lambda ws: "/dev/null", "/dev/null", "device")
special("symlink-loop", _loop, "loop.jsonl", "link loop")
special("broken-symlink", _broken, "link.jsonl", "broken symbolic link")
special("missing", lambda ws: "nope.jsonl", "nope.jsonl not found")
special("empty-folder", lambda ws: _folder(ws, {}), "folder", "holds no")
special("folder-of-text", lambda ws: _folder(ws, {"a.txt": "x"}), "folder", "holds no")
special("folder-mixed", lambda ws: _folder(ws, {"a.jsonl": '{"text": "a"}\n', "b.csv": "text\nb\n"}), "mixes")
special("folder-bad-file", lambda ws: _folder(ws, {"a.jsonl": '{"text": "a"}\n', "b.jsonl": "{oops\n"}),
        "b.jsonl line 1", "malformed JSON")
special("fifo-in-folder", _fifo_in_folder, "folder", "holds no")
special("hub-id-offline", lambda ws: "some-org/some-dataset", "some-org/some-dataset")
special("dot-dot-path", lambda ws: "../../no/such/dir/x.jsonl", "not found")
add("path-empty-sft", sft(""), "no training data")


# ---------------------------------------------------------------------------------------------------------------
# Preference data (dpo from the base, and data check --stage dpo)

def dpo_data(data: str) -> Callable[[Workspace], list]:
    return lambda ws: ["dpo", "--model", ws.model, "--data", data, "-o", "out", "--max-steps", "1"]


def pref_case(label: str, row: dict | str, fragment: str) -> None:
    for command, name in ((lambda d: check(d, "--stage", "dpo"), "data-check"), (dpo_data, "dpo")):
        def build(ws, command=command):
            lines = ws.pref_lines(4)
            at = ws.rng.randrange(5)
            lines.insert(at, row if isinstance(row, str) else json.dumps(row))
            ws.write("pairs.jsonl", "\n".join(lines) + "\n")
            ws.expected = ("pairs.jsonl", f"{'line' if isinstance(row, str) else 'row'} {at + 1}", fragment)
            return command("pairs.jsonl")(ws)

        add(f"pref-{label}-{name}", build)


pref_case("malformed", '{"prompt": "q", "chosen": ', "malformed JSON")
pref_case("identical", {"prompt": "q", "chosen": "a", "rejected": "a"}, "identical")
pref_case("chosen-empty", {"prompt": "q", "chosen": "", "rejected": "b"}, "empty")
pref_case("prompt-empty", {"prompt": " ", "chosen": "a", "rejected": "b"}, "empty")
pref_case("chosen-number", {"prompt": "q", "chosen": 4, "rejected": "b"}, "chosen")
pref_case("prompt-ends-assistant", {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a",
                                    "rejected": "b"}, "prompt must end")
pref_case("deep", '{"prompt": ' + "[" * 2000 + "]" * 2000 + "}", "nested too deeply")
for command, name in ((lambda d: check(d, "--stage", "dpo"), "data-check"), (dpo_data, "dpo")):
    add(f"pref-sft-rows-{name}", with_file("chats.jsonl", lambda ws: "\n".join(ws.chat_lines(3)) + "\n", command),
        "chats.jsonl", "cannot tell")


# ---------------------------------------------------------------------------------------------------------------
# Recipes (`sft --recipe`), each problem at the boundary where the file is read or validated

def recipe_case(label: str, text: str | bytes | Callable[[Workspace], str | bytes], *fragments: str,
                stage: str = "sft") -> None:
    def build(ws):
        ws.write("recipe.yaml", text(ws) if callable(text) else text)
        if stage == "run":
            return ["run", "recipe.yaml"]
        return [stage, "--recipe", "recipe.yaml"]

    add(f"recipe-{stage}-{label}", build, "recipe.yaml", *fragments)


recipe_case("yaml-syntax", "lora:\n  r: [8\n", "invalid YAML")
recipe_case("yaml-tab", "lora:\n\tr: 8\n", "invalid YAML")
recipe_case("non-utf8", b"stage: sft\nlora:\n  r: 8 # caf\xe9\n", "not UTF-8")
recipe_case("top-list", "- sft\n- dpo\n", "mapping of sections")
recipe_case("top-scalar", "sft\n", "mapping of sections")
recipe_case("stage-list", "stage: [sft]\n", "stage must be one word")
recipe_case("stage-mapping", "stage: {name: sft}\n", "stage must be one word")
recipe_case("stage-number", "stage: 5\n", "stage must be one word")
recipe_case("stage-other", "stage: dpo\n", "'dpo' recipe")
recipe_case("stage-pipeline", "stage: pipeline\n", "lorakit run")
recipe_case("deep", "lora: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply")
recipe_case("deep-block", "".join("  " * i + f"k{i}:\n" for i in range(150)) + "  " * 150 + "v: 1\n", "nested too deeply")
recipe_case("int-5000-digits", "train:\n  seed: " + "9" * 5000 + "\n", "integer too long")
recipe_case("unknown-section", "trian:\n  epochs: 1\n", "did you mean 'train'")
recipe_case("unknown-key", "lora:\n  rank: 8\n", "did you mean 'lora.r'")
recipe_case("section-scalar", "lora: 8\n", "lora")
recipe_case("section-list", "train: [1, 2]\n", "train")
recipe_case("anchors", "a: &a [1, 2]\nb: *a\n", "unknown key")
recipe_case("dpo-stage-list", "stage: [dpo]\n", "stage must be one word", stage="dpo")
recipe_case("run-stage-list", "stage: [pipeline]\n", "stage must be one word", stage="run")
recipe_case("run-non-utf8", b"stage: pipeline\nroot: caf\xe9\n", "not UTF-8", stage="run")

FIELD_VALUES = [
    # (section.key, YAML value, fragment of the message)
    ("lora.r", "true", "valid integer"), ("lora.r", "false", "valid integer"), ("lora.r", "'8'", "valid integer"),
    ("lora.r", "0", "greater than 0"), ("lora.r", "1.5", "valid integer"), ("lora.r", "100000", "less than"),
    ("lora.alpha", "true", "valid number"), ("lora.alpha", "-1", "greater than 0"), ("lora.alpha", ".nan", "finite"),
    ("lora.dropout", "1.5", "less than 1"), ("lora.target_modules", "[]", "non-empty"),
    ("lora.target_modules", "5", "target_modules"), ("lora.use_dora", "'yes'", "valid boolean"),
    ("lora.bias", "some", "'none'"), ("train.seed", "-1", "greater than or equal to 0"),
    ("train.seed", "4294967296", "less than 4294967296"), ("train.seed", "true", "valid integer"),
    ("train.max_steps", "-2", "greater than or equal to -1"), ("train.max_steps", "true", "valid integer"),
    ("train.epochs", "0", "greater than 0"), ("train.epochs", "1.0e400", "valid number"),
    ("train.learning_rate", "2", "less than 1"), ("train.learning_rate", "'fast'", "valid number"),
    ("train.learning_rate", ".inf", "finite"), ("train.micro_batch_size", "0", "greater than 0"),
    ("train.micro_batch_size", "true", "valid integer"), ("train.gradient_accumulation_steps", "2.5", "integer"),
    ("train.precision", "fp8", "'fp16'"), ("train.optim", "adam", "adamw_torch"),
    ("train.report_to", "[neptune]", "'tensorboard'"), ("train.save_steps", "0", "greater than 0"),
    ("data.max_length", "0", "greater than 8"), ("data.max_length", "true", "valid integer"),
    ("data.val_size", "1", "less than 1"), ("data.format", "chatml", "'messages'"),
    ("data.columns", "5", "dictionary"), ("data.columns", "{messages: 5}", "valid string"),
    ("data.train_on", "everything", "'assistant'"), ("data.max_rows", "0", "greater than 0"),
    ("model.name_or_path", "''", "empty string"), ("model.name_or_path", "5", "valid string"),
    ("model.trust_remote_code", "'true'", "valid boolean"), ("model.attn_implementation", "flash3", "'sdpa'"),
    ("output_dir", "''", "empty string"), ("output_dir", "[a]", "valid string"), ("method", "qlora4", "'qlora'"),
    ("preflight", "2", "valid boolean"),
]


def _field_yaml(key: str, value: str) -> str:
    section, _, name = key.partition(".")
    return f"{section}: {value}\n" if not name else f"{section}:\n  {name}: {value}\n"


for key, value, fragment in FIELD_VALUES:
    recipe_case(f"{key}={value}", _field_yaml(key, value), key, fragment)
for key, value, fragment in [("dpo.beta", "0", "greater than 0"), ("dpo.loss_type", "best", "'sigmoid'"),
                             ("dpo.label_smoothing", "0.7", "less than 0.5"), ("from_run", "[x]", "valid string"),
                             ("dpo.max_prompt_length", "true", "valid integer")]:
    recipe_case(f"{key}={value}", "stage: dpo\n" + _field_yaml(key, value), key, fragment, stage="dpo")


# Problems only the model or the data can reveal: refused before training, naming the field.
def recipe_with(ws: Workspace, **sections) -> str:
    data = {"model": {"name_or_path": ws.model}, "data": {"train": ws.chats()}, "output_dir": "out",
            "train": {"max_steps": 1}}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return ws.yaml("recipe.yaml", data)


def recipe_runtime(label: str, *fragments: str, **sections) -> None:
    add(f"recipe-runtime-{label}", lambda ws: ["sft", "-r", recipe_with(ws, **sections)], *fragments)


recipe_runtime("fp16-on-cpu", "train.precision fp16", "CUDA", train__precision="fp16", train__max_steps=1)
recipe_runtime("modules-to-save-missing", "lora.modules_to_save", "score_head", lora__modules_to_save=["score_head"])
recipe_runtime("target-modules-missing", "lora.target_modules", "qkv_fused", lora__target_modules=["qkv_fused"])
recipe_runtime("val-size-no-train-rows", "data.val_size", "no row to train on", data__val_size=0.9)
recipe_runtime("template-inline-broken", "chat template", model__chat_template="{% for m in messages %}{{ m }")
recipe_runtime("template-file-missing", "nope.jinja", "not found", model__chat_template="nope.jinja")
recipe_runtime("eval-file-missing", "gone.jsonl", "not found", data__eval="gone.jsonl")
recipe_runtime("report-to-missing", "wandb", train__report_to=["wandb"])


def _template_non_utf8(ws):
    ws.write("t.jinja", b"{% for m in messages %}{{ m['content'] }}\xff{% endfor %}")
    return ["sft", "-r", recipe_with(ws, model__chat_template="t.jinja")]


def _template_fifo(ws):
    os.mkfifo(ws.root / "t.jinja")
    return ["sft", "-r", recipe_with(ws, model__chat_template="t.jinja")]


add("recipe-runtime-template-non-utf8", _template_non_utf8, "t.jinja", "not UTF-8")
add("recipe-runtime-template-fifo", _template_fifo, "t.jinja")


def _untrained(ws):
    # an assistant reply far past max_length: nothing of it is left to train
    long_user = {"role": "user", "content": " ".join(["word"] * 300)}
    row = {"messages": [long_user, {"role": "assistant", "content": "ok"}]}
    ws.write("long.jsonl", "\n".join([json.dumps(row)] + ws.chat_lines(3)) + "\n")
    return ws


for label, command in (("sft", lambda ws: ["sft", "--model", ws.model, "--data", "long.jsonl", "-o", "out",
                                           "--set", "data.max_length=32"]),
                       ("data-check", lambda ws: ["data", "check", "long.jsonl", "--model", ws.model,
                                                  "--max-length", "32"])):
    add(f"untrained-rows-name-the-file-{label}", lambda ws, command=command: command(_untrained(ws)),
        "long.jsonl", "no trained token", "rows 1")


# ---------------------------------------------------------------------------------------------------------------
# --set expressions (resolved with --print-config: validation alone, nothing loads)

SET_CASES = [
    ("lora.r=true", "lora.r"), ("lora.r=yes", "lora.r"), ("lora.r=8.0", "lora.r"), ("lora.r=-3", "lora.r"),
    ("lora.r=", "lora.r"), ("lora.r=[8]", "lora.r"), ("lora.r={a: 1}", "lora.r"), ("lora=5", "lora"),
    ("lora.r.x=1", "lora.r"), ("lora.rank=8", "did you mean 'lora.r'"), ("lr=1e-4", "lr"), ("x.y.z=1", "x"),
    ("train.seed=-5", "train.seed"), ("train.seed=99999999999", "train.seed"), ("train.seed=1e3", "train.seed"),
    ("train.learning_rate=abc", "train.learning_rate"), ("train.learning_rate=1e400", "train.learning_rate"),
    ("train.learning_rate=nan", "train.learning_rate"), ("train.epochs=-1", "train.epochs"),
    ("train.max_steps=" + "9" * 5000, "too long"), ("train.report_to=[" * 2000, "train.report_to"),
    ("data.columns=[" + "[" * 3000 + "]" * 3001, "nested too deeply"), ("data.format=chatml", "data.format"),
    ("data.max_length=0", "data.max_length"), ("data.val_size=2", "data.val_size"),
    ("data.eval=x.jsonl", ""), ("stage=dpo", "stage"), ("train=", "train"), ("model=hub/id", "model"),
    ("output_dir=", "output_dir"), ("preflight=maybe", "preflight"), ("method=full", "method"),
    ("=5", "empty key"), ("...=5", "empty key"), ("novalue", "expected section.key=value"),
    ("lora.target_modules=[]", "lora.target_modules"), ("lora.dropout=-0.1", "lora.dropout"),
]
for expr, fragment in SET_CASES:
    def build(ws, expr=expr):
        if expr == "data.eval=x.jsonl":  # val_size and eval together
            return ["sft", "--set", "data.val_size=0.5", "--set", expr, "--print-config"]
        return ["sft", "--set", expr, "--print-config"]

    add(f"set-{expr[:40]}", build, fragment or "data")
for expr, fragment in [("dpo.beta=0", "dpo.beta"), ("dpo.loss_type=best", "dpo.loss_type"),
                       ("train.seed=-1", "train.seed"), ("from_run=[a]", "from_run")]:
    add(f"set-dpo-{expr}", lambda ws, expr=expr: ["dpo", "--set", expr, "--print-config"], fragment)
for expr, fragment in [("quantize.type=q9", "quantize.type"), ("merge.max_shard_size=0", "merge.max_shard_size"),
                       ("merge.max_shard_size=2XB", "merge.max_shard_size"), ("merge.dtype=int4", "merge.dtype"),
                       ("stages=[merge]", "stages"), ("stages=[dpo, sft]", "stages"), ("stages=[]", "stages"),
                       ("stages=[train]", "stages"), ("sft.lora.r=true", "sft.lora.r"), ("root=", "root"),
                       ("quantize.format=awq", "quantize.format"), ("sft.train.seed=-1", "sft.train.seed")]:
    def build(ws, expr=expr):
        ws.write("pipe.yaml", f"stage: pipeline\nroot: p\nsft:\n  data:\n    train: {ws.chats()}\n")
        return ["run", "pipe.yaml", "--set", expr, "--print-config"]

    add(f"set-run-{expr}", build, fragment)
for expr, fragment in [("data.format=chatml", "data.format"), ("data.max_length=true", "data.max_length"),
                       ("data=5", "data field"), ("data.bogus=1", "data.bogus"), ("val_size=7", "data.val_size")]:
    add(f"set-data-check-{expr}", lambda ws, expr=expr: ["data", "check", ws.chats(), "--set", expr], fragment)


# ---------------------------------------------------------------------------------------------------------------
# Command-line values

def cli(label: str, build: Callable[[Workspace], list], *fragments: str) -> None:
    add(f"cli-{label}", build, *fragments)


for flag, value, fragment in [("--seed", "-1", "train.seed"), ("--seed", str(2**32), "train.seed"),
                              ("--max-steps", "-5", "train.max_steps"), ("--epochs", "0", "train.epochs"),
                              ("--epochs", "1000", "train.epochs"), ("--lr", "0", "train.learning_rate"),
                              ("--lr", "5", "train.learning_rate"), ("--model", "", "model.name_or_path"),
                              ("--model", "   ", "model.name_or_path"), ("--output-dir", "", "output_dir")]:
    for stage in ("sft", "dpo"):
        cli(f"{stage}{flag}={value or 'empty'}",
            lambda ws, flag=flag, value=value, stage=stage: [stage, "--data", ws.chats(), flag, value, "--print-config"],
            fragment)


def out_dir(label: str, target: Callable[[Workspace], str], *fragments: str) -> None:
    """An output path that names no folder of its own, or one that cannot be written: refused before anything."""
    cli(f"sft-o-{label}", lambda ws: ["sft", "--model", ws.model, "--data", ws.chats(), "-o", target(ws),
                                      "--max-steps", "1"], *fragments)
    cli(f"merge-o-{label}", lambda ws: ["merge", str(ws.copy_run()), "-o", target(ws)], *fragments)
    cli(f"quantize-o-{label}", lambda ws: ["quantize", str(ws.copy_model("m", {"stage": "merge"})), "-o",
                                           target(ws)], *fragments)


def _under_file(ws):
    ws.write("afile", "x")
    return "afile/sub/run"


def _under_loop(ws):
    os.symlink("loopdir", ws.root / "loopdir")
    return "loopdir/run"


out_dir("dot", lambda ws: ".", "names no folder")
out_dir("dot-slash", lambda ws: "./", "names no folder")
out_dir("dot-dot", lambda ws: "..", "names no folder")
out_dir("sub-dot-dot", lambda ws: "sub/..", "names no folder")
out_dir("root", lambda ws: "/", "names no folder")
out_dir("cwd-absolute", lambda ws: str(ws.root), "current folder")
out_dir("parent-absolute", lambda ws: str(ws.root.parent), "current folder")
out_dir("sys", lambda ws: "/sys/lorakit-fuzz-out", "/sys/lorakit-fuzz-out", "cannot be created")
out_dir("proc", lambda ws: "/proc/lorakit-fuzz-out", "/proc/lorakit-fuzz-out", "cannot be created")
out_dir("under-file", _under_file, "afile", "is a file")
out_dir("under-link-loop", _under_loop, "loopdir")
cli("sft-o-empty", lambda ws: ["sft", "--model", ws.model, "--data", ws.chats(), "-o", "", "--max-steps", "1"],
    "output_dir")
cli("merge-o-empty", lambda ws: ["merge", str(ws.copy_run()), "-o", ""], "names no folder")
cli("quantize-o-empty", lambda ws: ["quantize", str(ws.copy_model("m", {"stage": "merge"})), "-o", ""],
    "names no folder")
cli("sft-model-empty", lambda ws: ["sft", "--model", "", "--data", ws.chats(), "-o", "out"], "model.name_or_path")
cli("merge-model-empty", lambda ws: ["merge", str(ws.copy_run()), "--model", ""], "--model is empty")
cli("sft-model-missing-folder", lambda ws: ["sft", "--model", "./no-model", "--data", ws.chats(), "-o", "out"],
    "no-model")
cli("sft-model-is-file", lambda ws: ["sft", "--model", ws.chats(), "--data", ws.chats(), "-o", "out"],
    "chats.jsonl", "not a model folder")
cli("sft-model-fifo", lambda ws: ["sft", "--model", _fifo(ws), "--data", ws.chats(), "-o", "out"], "pipe.jsonl")
for flag, value, fragment in [("--format", "chatml", "data.format (--format)"),
                              ("--max-length", "0", "data.max_length (--max-length)"),
                              ("--max-length", "-3", "data.max_length"), ("--stage", "ppo", "--stage")]:
    cli(f"data-check{flag}={value}", lambda ws, flag=flag, value=value: ["data", "check", ws.chats(), flag, value],
        fragment)
for args, fragment in [(["--dtype", "int8"], "--dtype"), (["--max-shard-size", "0"], "--max-shard-size"),
                       (["--max-shard-size", "big"], "--max-shard-size"), (["--base", "new"], "--base")]:
    cli(f"merge{'='.join(args)}", lambda ws, args=args: ["merge", str(ws.copy_run()), *args], fragment)
for args, fragment in [(["--format", "onnx"], "--format"), (["--type", "q9"], "GGUF type"),
                       (["--format", "awq"], "AWQ")]:
    cli(f"quantize{'='.join(args)}",
        lambda ws, args=args: ["quantize", str(ws.copy_model("m", {"stage": "merge"})), *args], fragment)
for args, fragment in [(["--method", "dora"], "--method"), (["--stage", "ppo"], "--stage"),
                       (["--gpu", "rtx9999"], "--gpu"), (["--optimizer", "lion"], "--optimizer")]:
    cli(f"vram{'='.join(args)}", lambda ws, args=args: ["vram-estimate", "meta-llama/Llama-3.1-8B", *args], fragment)
cli("quantize-type-empty",
    lambda ws: ["quantize", str(ws.copy_model("m", {"stage": "merge", "status": "complete"})), "--type", ""], "--type")
cli("merge-missing", lambda ws: ["merge", "nothing-here"], "nothing-here")
cli("merge-a-file", lambda ws: ["merge", ws.chats()], "chats.jsonl")
cli("merge-plain-folder", lambda ws: ["merge", str(_folder(ws, {"a.txt": "x"}))], "folder")
cli("generate-missing", lambda ws: ["generate", "nothing-here", "-p", "hi"], "nothing-here")
cli("quantize-missing", lambda ws: ["quantize", "nothing-here"], "nothing-here")
cli("dpo-from-missing", lambda ws: ["dpo", "--from", "nothing-here", "--data", ws.prefs(), "-o", "out"],
    "nothing-here")
cli("dpo-from-a-file", lambda ws: ["dpo", "--from", ws.chats(), "--data", ws.prefs(), "-o", "out"], "chats.jsonl")
cli("run-missing-recipe", lambda ws: ["run", "nothing.yaml"], "nothing.yaml")
cli("sft-recipe-fifo", lambda ws: ["sft", "-r", _fifo(ws)], "pipe.jsonl")
cli("sft-recipe-folder", lambda ws: ["sft", "-r", str(_folder(ws, {}))], "folder")


# ---------------------------------------------------------------------------------------------------------------
# --force never replaces a folder that is or holds an input of the command

def finished_output(ws: Workspace, name: str = "out/r") -> Path:
    """A folder lorakit wrote (it has a manifest), so --force alone would replace it."""
    folder = ws.root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "sft", "status": "complete"}))
    return folder


def _data_in_output(ws):
    finished_output(ws)
    ws.chats("out/r/train.jsonl")
    return ["sft", "--model", ws.model, "--data", "out/r/train.jsonl", "-o", "out/r", "--force"]


def _data_in_output_parent(ws):
    finished_output(ws)
    ws.chats("out/r/train.jsonl")
    (ws.root / "out" / "manifest.json").write_text("{}")
    return ["sft", "--model", ws.model, "--data", "out/r/train.jsonl", "-o", "out", "--force"]


def _eval_in_output(ws):
    finished_output(ws)
    ws.chats("out/r/eval.jsonl")
    return ["sft", "--model", ws.model, "--data", ws.chats(), "-o", "out/r", "--force", "--set",
            "data.eval=out/r/eval.jsonl"]


def _template_in_output(ws):
    finished_output(ws)
    ws.write("out/r/t.jinja", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return ["sft", "--model", ws.model, "--data", ws.chats(), "-o", "out/r", "--force", "--set",
            "model.chat_template=out/r/t.jinja"]


def _recipe_in_output(ws):
    finished_output(ws)
    ws.yaml("out/r/recipe.yaml", {"model": {"name_or_path": ws.model}, "data": {"train": ws.chats()}})
    return ["sft", "-r", "out/r/recipe.yaml", "-o", "out/r", "--force"]


def _model_is_output(stage):
    def build(ws):
        ws.copy_model("model", {"stage": "merge", "status": "complete"})
        data = ws.chats() if stage == "sft" else ws.prefs()
        return [stage, "--model", "model", "--data", data, "-o", "model", "--force"]

    return build


def _model_in_output(ws):
    finished_output(ws, "out")
    ws.copy_model("out/model")
    return ["sft", "--model", "out/model", "--data", ws.chats(), "-o", "out", "--force"]


def _parent_is_output(ws):
    ws.copy_run("sftrun")
    return ["dpo", "--from", "sftrun", "--data", ws.prefs(), "-o", "sftrun", "--force"]


def _parent_in_output(ws):
    ws.copy_run("out/sftrun")
    (ws.root / "out" / "manifest.json").write_text("{}")
    return ["dpo", "--from", "out/sftrun", "--data", ws.prefs(), "-o", "out", "--force"]


def _merge_into_base(ws):
    ws.copy_run("sftrun")
    ws.copy_model("base", {"stage": "merge", "status": "complete"})
    return ["merge", "sftrun", "--model", "base", "-o", "base", "--force"]


def _merge_into_run(ws):
    ws.copy_run("sftrun")
    return ["merge", "sftrun", "-o", "sftrun", "--force"]


def _quantize_into_source(ws):
    ws.copy_model("m", {"stage": "merge", "status": "complete"})
    return ["quantize", "m", "-o", "m", "--force"]


def _quantize_run_into_run(ws):
    ws.copy_run("sftrun")
    return ["quantize", "sftrun", "-o", "sftrun", "--force"]


def _pipeline_recipe_in_stage(ws):
    finished_output(ws, "p/sft")
    ws.write("p/sft/pipe.yaml", f"stage: pipeline\nroot: p\nstages: [sft]\nsft:\n  model:\n    name_or_path: "
             f"{ws.model}\n  data:\n    train: {ws.chats()}\n  train:\n    max_steps: 1\n")
    return ["run", "p/sft/pipe.yaml", "--force"]


def _pipeline_data_in_stage(ws):
    finished_output(ws, "p/merged")
    ws.chats("p/merged/train.jsonl")
    ws.write("pipe.yaml", f"stage: pipeline\nroot: p\nstages: [sft, merge]\nsft:\n  model:\n    name_or_path: {ws.model}\n"
             "  data:\n    train: p/merged/train.jsonl\n")
    return ["run", "pipe.yaml", "--force"]


for label, build in [("data-in-output", _data_in_output), ("data-in-output-parent", _data_in_output_parent),
                     ("eval-in-output", _eval_in_output), ("template-in-output", _template_in_output),
                     ("recipe-in-output", _recipe_in_output), ("sft-model-is-output", _model_is_output("sft")),
                     ("dpo-model-is-output", _model_is_output("dpo")), ("model-in-output", _model_in_output),
                     ("dpo-parent-is-output", _parent_is_output), ("dpo-parent-in-output", _parent_in_output),
                     ("merge-into-base", _merge_into_base), ("merge-into-run", _merge_into_run),
                     ("quantize-into-source", _quantize_into_source),
                     ("quantize-run-into-run", _quantize_run_into_run),
                     ("run-recipe-in-stage", _pipeline_recipe_in_stage),
                     ("run-data-in-stage", _pipeline_data_in_stage)]:
    add(f"force-{label}", build, "which this command reads")


# ---------------------------------------------------------------------------------------------------------------
# Damaged run folders, through every command that reads one

def safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def adapter_tensors(ws: Workspace) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ws.world.run / "adapter_model.safetensors"))


def _with_nan(ws, value=float("nan")):
    tensors = adapter_tensors(ws)
    key = sorted(tensors)[ws.rng.randrange(len(tensors))]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    return safetensors_bytes(tensors)


def _rank_mismatch(ws):
    import torch

    tensors = adapter_tensors(ws)
    key = sorted(k for k in tensors if ".lora_B." in k)[0]
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 2)
    return safetensors_bytes(tensors)


def _all_rank(ws, rank):
    import torch

    tensors = adapter_tensors(ws)
    for key, tensor in list(tensors.items()):
        shape = (rank, tensor.shape[1]) if ".lora_A." in key else (tensor.shape[0], rank)
        tensors[key] = torch.zeros(shape)
    return safetensors_bytes(tensors)


def _wrong_in_features(ws):
    import torch

    tensors = adapter_tensors(ws)
    for key, tensor in list(tensors.items()):
        if ".lora_A." in key:
            tensors[key] = torch.zeros(tensor.shape[0], tensor.shape[1] + 8)
    return safetensors_bytes(tensors)


def _edit_json(name, change):
    def make(ws):
        data = json.loads((ws.world.run / name).read_text())
        change(data)
        return json.dumps(data)

    return make


def _config_targets(ws):
    return _edit_json("adapter_config.json", lambda c: c.update(target_modules=["no_such_proj"]))(ws)


RUN_DAMAGE: list[tuple[str, str, Callable[[Workspace], str | bytes | None], tuple[str, ...]]] = [
    # (label, file, new content (None: delete; a callable may also make links itself), fragments)
    ("manifest-garbage", "manifest.json", lambda ws: "not json at all", ("manifest.json", "malformed JSON")),
    ("manifest-cut", "manifest.json", lambda ws: cut(ws, (ws.world.run / "manifest.json").read_bytes()),
     ("manifest.json", "is damaged")),
    ("manifest-list", "manifest.json", lambda ws: "[1, 2]", ("manifest.json", "expected a JSON object")),
    ("manifest-null", "manifest.json", lambda ws: "null", ("manifest.json", "expected a JSON object")),
    ("manifest-empty", "manifest.json", lambda ws: "", ("manifest.json", "malformed JSON")),
    ("manifest-non-utf8", "manifest.json", lambda ws: b'{"stage": "sft\xff"}', ("manifest.json", "not UTF-8")),
    ("manifest-deep", "manifest.json", lambda ws: '{"a": ' + "[" * 3000 + "]" * 3000 + "}",
     ("manifest.json", "nested too deeply")),
    ("manifest-big-int", "manifest.json", lambda ws: '{"n": ' + "5" * 5000 + "}", ("manifest.json", "too long")),
    ("manifest-running", "manifest.json", _edit_json("manifest.json", lambda m: m.update(status="running")),
     ("not complete",)),
    ("manifest-no-base", "manifest.json", _edit_json("manifest.json", lambda m: m.pop("base_model")),
     ("manifest.json", "base_model")),
    ("manifest-base-string", "manifest.json", _edit_json("manifest.json", lambda m: m.update(base_model="x")),
     ("manifest.json", "base_model")),
    ("manifest-parent-list", "manifest.json", _edit_json("manifest.json", lambda m: m.update(parent=[1])),
     ("manifest.json", "parent")),
    ("manifest-stage-list", "manifest.json", _edit_json("manifest.json", lambda m: m.update(stage=["sft"])),
     ("not a training run",)),
    ("manifest-missing", "manifest.json", lambda ws: None, ("manifest.json",)),
    ("recipe-garbage", "lorakit.yaml", lambda ws: "lora: [8\n", ("lorakit.yaml", "invalid YAML")),
    ("recipe-list", "lorakit.yaml", lambda ws: "- a\n- b\n", ("lorakit.yaml", "mapping")),
    ("recipe-non-utf8", "lorakit.yaml", lambda ws: b"stage: sft\nmethod: lo\xffra\n", ("lorakit.yaml", "not UTF-8")),
    ("recipe-bad-field", "lorakit.yaml", lambda ws: (ws.world.run / "lorakit.yaml").read_text().replace(
        "  r: 4\n", "  r: true\n"), ("lorakit.yaml", "lora.r")),
    ("recipe-stage-list", "lorakit.yaml", lambda ws: "stage: [sft]\n", ("lorakit.yaml", "stage")),
    ("recipe-missing", "lorakit.yaml", lambda ws: None, ("lorakit.yaml",)),
    ("adapter-config-garbage", "adapter_config.json", lambda ws: "{oops", ("adapter_config.json", "malformed JSON")),
    ("adapter-config-list", "adapter_config.json", lambda ws: "[]", ("adapter_config.json", "JSON object")),
    ("adapter-config-non-utf8", "adapter_config.json", lambda ws: b'{"r": 4, "x": "\xfe"}',
     ("adapter_config.json", "not UTF-8")),
    ("adapter-config-r-true", "adapter_config.json", _edit_json("adapter_config.json", lambda c: c.update(r=True)),
     ("adapter_config.json", "'r'")),
    ("adapter-config-r-zero", "adapter_config.json", _edit_json("adapter_config.json", lambda c: c.update(r=0)),
     ("adapter_config.json", "'r'")),
    ("adapter-config-r-mismatch", "adapter_config.json", _edit_json("adapter_config.json", lambda c: c.update(r=8)),
     ("adapter_model.safetensors", "r=8")),
    ("adapter-config-empty", "adapter_config.json", lambda ws: "", ("adapter_config.json",)),
    ("adapter-weights-empty", "adapter_model.safetensors", lambda ws: b"", ("adapter_model.safetensors", "empty")),
    ("adapter-weights-no-tensors", "adapter_model.safetensors", lambda ws: safetensors_bytes({}),
     ("adapter_model.safetensors", "no tensors")),
    ("adapter-weights-not-lora", "adapter_model.safetensors",
     lambda ws: safetensors_bytes({"other.weight": __import__("torch").zeros(2, 2)}),
     ("adapter_model.safetensors", "no LoRA tensors")),
    ("adapter-weights-rank-ab", "adapter_model.safetensors", _rank_mismatch, ("adapter_model.safetensors", "rank")),
    ("adapter-weights-rank-all", "adapter_model.safetensors", lambda ws: _all_rank(ws, 2),
     ("adapter_model.safetensors", "r=4")),
    ("adapter-weights-dir", "adapter_model.safetensors", lambda ws: "DIR", ("adapter_model.safetensors",)),
    ("adapter-weights-loop", "adapter_model.safetensors", lambda ws: "LOOP", ("adapter_model.safetensors",)),
    ("tokenizer-garbage", "tokenizer.json", lambda ws: "{{{", ("tokenizer.json", "malformed JSON")),
    ("tokenizer-cut", "tokenizer.json", lambda ws: cut(ws, (ws.world.run / "tokenizer.json").read_bytes()),
     ("tokenizer.json",)),
    ("tokenizer-non-utf8", "tokenizer.json", lambda ws: b'{"version": "\xc3"}', ("tokenizer.json", "not UTF-8")),
    ("tokenizer-list", "tokenizer.json", lambda ws: "[1]", ("tokenizer.json", "JSON object")),
    ("tokenizer-config-garbage", "tokenizer_config.json", lambda ws: "nope", ("tokenizer_config.json",)),
    ("tokenizer-config-list", "tokenizer_config.json", lambda ws: "[]", ("tokenizer_config.json",)),
    ("template-non-utf8", "chat_template.jinja", lambda ws: b"{{ messages \xff }}", ("chat_template.jinja",)),
    ("metrics-cut-line", "metrics.jsonl", lambda ws: (ws.world.run / "metrics.jsonl").read_text() + '{"step": 3, "lo',
     ("metrics.jsonl line", "malformed JSON")),
    ("metrics-garbage-line", "metrics.jsonl", lambda ws: "garbage\n" + (ws.world.run / "metrics.jsonl").read_text(),
     ("metrics.jsonl line 1",)),
    ("metrics-list-line", "metrics.jsonl", lambda ws: "[1]\n", ("metrics.jsonl line 1", "JSON object")),
    ("metrics-non-utf8", "metrics.jsonl", lambda ws: b'{"step": 1, "x": "\xff"}\n', ("metrics.jsonl", "not UTF-8")),
]
for seed in range(3):
    RUN_DAMAGE.append((f"adapter-weights-cut-{seed}", "adapter_model.safetensors",
                       lambda ws: cut(ws, (ws.world.run / "adapter_model.safetensors").read_bytes()),
                       ("adapter_model.safetensors", "not a readable safetensors file")))
    RUN_DAMAGE.append((f"adapter-weights-random-{seed}", "adapter_model.safetensors", lambda ws: random_bytes(ws, 4000),
                       ("adapter_model.safetensors",)))
# only merge and dpo --from read the weights' values: NaN is a damage for them (generate would just print garbage)
VALUE_DAMAGE = [
    ("adapter-weights-nan", "adapter_model.safetensors", _with_nan, ("adapter_model.safetensors", "NaN")),
    ("adapter-weights-inf", "adapter_model.safetensors", lambda ws: _with_nan(ws, float("inf")),
     ("adapter_model.safetensors", "NaN or inf")),
]
# visible only against the base model: PEFT's own errors, mapped by type
BASE_DAMAGE = [
    ("adapter-targets-missing", "adapter_config.json", _config_targets, ("sftrun", "target modules")),
    ("adapter-wrong-in-features", "adapter_model.safetensors", _wrong_in_features, ("sftrun", "does not fit")),
]


def damage(ws: Workspace, run: Path, file: str, make) -> None:
    path = run / file
    content = make(ws)
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if content is None:
        return
    if content == "DIR":
        path.mkdir()
    elif content == "LOOP":
        os.symlink(path.name, path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


RUN_COMMANDS = {
    "merge": lambda ws: ["merge", "sftrun"],
    "dpo-from": lambda ws: ["dpo", "--from", "sftrun", "--data", ws.prefs(), "-o", "out", "--max-steps", "1"],
    "generate": lambda ws: ["generate", "sftrun", "-p", "hi"],
    "quantize": lambda ws: ["quantize", "sftrun"],
    "eval": lambda ws: ["eval", "sftrun", "--data", ws.chats(), "--no-base"],
    "serve-info": lambda ws: ["serve-info", "sftrun"],
}


def run_damage_case(label, file, make, fragments, commands) -> None:
    for name in commands:
        def build(ws, name=name, file=file, make=make):
            run = ws.copy_run("sftrun")
            damage(ws, run, file, make)
            return RUN_COMMANDS[name](ws)

        add(f"run-{label}-{name}", build, "sftrun", *fragments)


for label, file, make, fragments in RUN_DAMAGE:
    run_damage_case(label, file, make, fragments, RUN_COMMANDS)
# `lorakit report` reads a folder's manifest, metrics and eval.json (not its weights): the damage it must name
REPORT_DAMAGE = {"manifest-garbage", "manifest-cut", "manifest-list", "manifest-null", "manifest-empty",
                 "manifest-non-utf8", "manifest-deep", "manifest-big-int", "manifest-base-string",
                 "manifest-parent-list", "metrics-cut-line", "metrics-garbage-line", "metrics-list-line",
                 "metrics-non-utf8"}
RUN_COMMANDS["report"] = lambda ws: ["report", "sftrun"]
for label, file, make, fragments in RUN_DAMAGE:
    if label in REPORT_DAMAGE:
        run_damage_case(label, file, make, fragments, ("report",))
for label, content, fragments in [
    ("list", "[1, 2]", ("eval.json", "expected a JSON object")),
    ("garbage", "{", ("eval.json", "malformed JSON")),
    ("non-utf8", b'{"candidates": "\xff"}', ("eval.json", "not UTF-8")),
    ("candidates-ints", '{"candidates": [1, 2]}', ("eval.json", "candidates")),
    ("candidate-name-int", '{"candidates": [{"name": 3}]}', ("eval.json", "candidates")),
    ("regressions-partial", '{"candidates": [], "regressions": [{"metric": "loss"}]}', ("eval.json", "regressions")),
]:
    run_damage_case(f"eval-json-{label}", "eval.json", lambda ws, content=content: content, fragments, ("report",))
for label, change, fragments in [
    ("summary-list", {"summary": [1]}, ("manifest.json", "summary")),
    ("estimate-number", {"vram_estimate": 3}, ("manifest.json", "vram_estimate")),
    ("trainable-string", {"trainable_parameters": "9"}, ("manifest.json", "trainable_parameters")),
    ("device-list", {"device": ["cpu"]}, ("manifest.json", "device")),
]:
    run_damage_case(f"manifest-{label}", "manifest.json",
                    _edit_json("manifest.json", lambda m, change=change: m.update(change)), fragments, ("report",))
for label, file, make, fragments in VALUE_DAMAGE:
    run_damage_case(label, file, make, fragments, ("merge", "dpo-from", "quantize", "eval"))
for label, file, make, fragments in BASE_DAMAGE:
    run_damage_case(label, file, make, fragments, ("merge", "dpo-from"))


def _bare_adapter(make_tensors):
    """A plain PEFT adapter folder (no lorakit manifest) merged with --model."""
    def build(ws):
        folder = ws.root / "adapter"
        folder.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (folder / name).write_bytes((ws.world.run / name).read_bytes())
        if make_tensors is not None:
            (folder / "adapter_model.safetensors").write_bytes(make_tensors(ws))
        return ["merge", "adapter", "--model", ws.model, "-o", "merged"]

    return build


add("bare-adapter-no-tensors", _bare_adapter(lambda ws: safetensors_bytes({})), "adapter", "no tensors")
add("bare-adapter-nan", _bare_adapter(_with_nan), "adapter", "NaN")
add("bare-adapter-cut", _bare_adapter(lambda ws: cut(ws, (ws.world.run / "adapter_model.safetensors").read_bytes())),
    "adapter", "adapter_model.safetensors")


def _bare_config(text):
    def build(ws):
        argv = _bare_adapter(None)(ws)
        (ws.root / "adapter" / "adapter_config.json").write_text(text)
        return argv

    return build


add("bare-adapter-config-list", _bare_config("[]"), "adapter", "adapter_config.json")
add("bare-adapter-config-base-list", _bare_config('{"r": 4, "base_model_name_or_path": [1]}'), "adapter")


# ---------------------------------------------------------------------------------------------------------------
# Damaged interrupted runs: --resume reports the file and changes nothing

def resume_case(label: str, file: str, make, *fragments: str, stage: str = "sft") -> None:
    def build(ws):
        staging = ws.partial("sftrun")
        damage(ws, staging, file, make)
        return [stage, "-r", ws.run_recipe(), "--resume", "--max-steps", "3"]

    add(f"resume-{label}", build, ".sftrun.partial", *fragments)


CKPT = "checkpoints/checkpoint-2"


def _ckpt_bytes(name):
    return lambda ws: (ws.world.run / CKPT / name).read_bytes()


for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
    for seed in range(2):
        resume_case(f"cut-{name}-{seed}", f"{CKPT}/{name}", lambda ws, name=name: cut(ws, _ckpt_bytes(name)(ws)),
                    f"{CKPT}/{name}")
    resume_case(f"random-{name}", f"{CKPT}/{name}", lambda ws: random_bytes(ws, 3000), f"{CKPT}/{name}")
    resume_case(f"empty-{name}", f"{CKPT}/{name}", lambda ws: b"", f"{CKPT}/{name}")
resume_case("missing-optimizer", f"{CKPT}/optimizer.pt", lambda ws: None, f"{CKPT}/optimizer.pt", "missing")
resume_case("trainer-state-garbage", f"{CKPT}/trainer_state.json", lambda ws: "{", "trainer_state.json",
            "malformed JSON")
resume_case("trainer-state-list", f"{CKPT}/trainer_state.json", lambda ws: "[]", "trainer_state.json",
            "JSON object")
resume_case("trainer-state-cut", f"{CKPT}/trainer_state.json",
            lambda ws: cut(ws, _ckpt_bytes("trainer_state.json")(ws)), "trainer_state.json")
resume_case("trainer-state-step", f"{CKPT}/trainer_state.json", lambda ws: '{"global_step": "two"}',
            "global_step")
resume_case("trainer-state-missing", f"{CKPT}/trainer_state.json", lambda ws: None, "trainer_state.json")
resume_case("checkpoint-adapter-config", f"{CKPT}/adapter_config.json", lambda ws: "[", "adapter_config.json")
resume_case("checkpoint-tokenizer", f"{CKPT}/tokenizer.json", lambda ws: b"\xff\xfe", "tokenizer.json")
resume_case("staged-recipe-garbage", "lorakit.yaml", lambda ws: "lora: {r: [\n", "lorakit.yaml", "invalid YAML")
resume_case("staged-recipe-list", "lorakit.yaml", lambda ws: "[1]\n", "lorakit.yaml")
resume_case("staged-recipe-non-utf8", "lorakit.yaml", lambda ws: b"stage: \xff\n", "lorakit.yaml", "not UTF-8")
resume_case("staged-manifest-garbage", "manifest.json", lambda ws: "{]", "manifest.json")
resume_case("staged-manifest-list", "manifest.json", lambda ws: "[]", "manifest.json")
resume_case("staged-metrics-middle-line", "metrics.jsonl",
            lambda ws: "oops\n" + (ws.world.run / "metrics.jsonl").read_text(), "metrics.jsonl line 1")


def _torch_bytes(obj) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# whole files of the wrong content: only the Trainer, loading them, can tell (the model loads; nothing trains)
resume_case("optimizer-wrong-state", f"{CKPT}/optimizer.pt", lambda ws: _torch_bytes({"state": {}, "param_groups": []}),
            f"{CKPT}", "cannot load it")


def _resume_changed_recipe(ws):
    ws.partial("sftrun")
    return ["sft", "-r", ws.run_recipe(lora__r=8), "--resume", "--max-steps", "3"]


add("resume-changed-recipe", _resume_changed_recipe, "differ from the interrupted run")


def _waiting(ws):
    ws.partial("sftrun")
    return ["sft", "-r", ws.run_recipe(), "--max-steps", "3"]


add("resume-needed", _waiting, "interrupted run is waiting", "checkpoint at step 2")
add("resume-finished", lambda ws: (ws.copy_run("sftrun"), ["sft", "-r", ws.run_recipe(), "--resume"])[1],
    "nothing to resume")


# ---------------------------------------------------------------------------------------------------------------
# Damaged model folders (a merged model): quantize and generate

def model_damage(label: str, file: str, make, *fragments: str) -> None:
    for name, command in (("quantize", lambda: ["quantize", "m", "-o", "exp"]),
                          ("generate", lambda: ["generate", "m", "-p", "hi"]),
                          ("serve-info", lambda: ["serve-info", "m"])):
        def build(ws, command=command):
            folder = ws.copy_model("m", {"stage": "merge", "status": "complete"})
            damage(ws, folder, file, make)
            return command()

        add(f"model-{label}-{name}", build, "m", *fragments)


model_damage("config-garbage", "config.json", lambda ws: "{", "config.json")
model_damage("config-list", "config.json", lambda ws: "[]", "config.json")
model_damage("config-non-utf8", "config.json", lambda ws: b'{"x": "\xff"}', "config.json", "not UTF-8")
model_damage("tokenizer-garbage", "tokenizer.json", lambda ws: "nope", "tokenizer.json")
model_damage("tokenizer-config-list", "tokenizer_config.json", lambda ws: "[]", "tokenizer_config.json")
model_damage("weights-cut", "model.safetensors",
             lambda ws: cut(ws, (ws.world.model / "model.safetensors").read_bytes()), "model.safetensors")
model_damage("weights-random", "model.safetensors", lambda ws: random_bytes(ws, 2000), "model.safetensors")
model_damage("weights-empty", "model.safetensors", lambda ws: b"", "model.safetensors")
model_damage("generation-config-garbage", "generation_config.json", lambda ws: "{", "generation_config.json")
model_damage("manifest-garbage", "manifest.json", lambda ws: "not json", "manifest.json", "malformed JSON")
model_damage("config-vocab", "config.json",
             lambda ws: json.dumps({**json.loads((ws.world.model / "config.json").read_text()), "vocab_size": 1100}),
             "config.json", "vocab_size is 1100")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt")


def _without_tokenizer(folder: Path) -> None:
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)


add("model-no-tokenizer-generate", lambda ws: (_without_tokenizer(ws.copy_model("m", {"stage": "merge",
                                                                                       "status": "complete"})),
                                               ["generate", "m", "-p", "hi"])[1], "m", "tokenizer.json", "missing")
for name, command in (("generate", lambda ws: ["generate", "sftrun", "-p", "hi"]),
                      ("eval", lambda ws: ["eval", "sftrun", "--data", ws.chats(), "--no-base"])):
    add(f"run-no-tokenizer-{name}", lambda ws, command=command: (_without_tokenizer(ws.copy_run("sftrun")),
                                                                 command(ws))[1], "sftrun", "tokenizer.json", "missing")


# ---------------------------------------------------------------------------------------------------------------
# Damaged GGUF exports: eval and serve-info read the file's tables before anything loads it

def gguf_bytes(ws: Workspace) -> bytes:
    """A small GGUF file (metadata and two tensors), as gguf's writer lays one out."""
    import gguf
    import numpy as np

    file = ws.root / ".scratch.gguf"
    writer = gguf.GGUFWriter(str(file), "llama")
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.ones((16, 8), np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    content = file.read_bytes()
    file.unlink()
    return content


def gguf_damage(label: str, make) -> None:
    for name, command in (("eval", lambda ws: ["eval", "exp", "--data", ws.chats(), "--no-base"]),
                          ("serve-info", lambda ws: ["serve-info", "exp"])):
        def build(ws, command=command):
            export = ws.root / "exp"
            export.mkdir()
            damage(ws, export, "model-q8_0.gguf", make)
            (export / "manifest.json").write_text(json.dumps({
                "stage": "quantize", "status": "complete", "format": "gguf", "type": "q8_0",
                "files": ["model-q8_0.gguf"], "source": str(ws.world.model)}))
            return command(ws)

        add(f"gguf-{label}-{name}", build, "exp", "model-q8_0.gguf")


for seed in range(4):
    gguf_damage(f"cut-{seed}", lambda ws: cut(ws, gguf_bytes(ws)[:-8]))  # always short of the last tensor
    gguf_damage(f"random-{seed}", lambda ws: b"GGUF" + random_bytes(ws, 400))
gguf_damage("empty", lambda ws: b"")
gguf_damage("header-only", lambda ws: gguf_bytes(ws)[:24])
gguf_damage("dir", lambda ws: "DIR")


# ---------------------------------------------------------------------------------------------------------------
# Pipelines: every stage's section checked before the first starts, and nothing left when nothing ran

def pipeline_text(ws: Workspace, root: str = "p", extra: str = "", sft_data: str | None = None,
                  dpo_data: str | None = None, stages: str = "[sft, dpo, merge, quantize]") -> str:
    sft_data = sft_data or ws.chats()
    dpo_data = dpo_data or ws.prefs()
    return (f"stage: pipeline\nroot: {json.dumps(root)}\nstages: {stages}\n"
            f"sft:\n  model:\n    name_or_path: {ws.model}\n  data:\n    train: {sft_data}\n  train:\n    max_steps: 1\n"
            f"dpo:\n  data:\n    train: {dpo_data}\n  train:\n    max_steps: 1\n{extra}")


def pipeline_case(label: str, make: Callable[[Workspace], str], *fragments: str, before=None) -> None:
    def build(ws):
        if before is not None:
            before(ws)
        ws.write("pipe.yaml", make(ws))
        return ["run", "pipe.yaml"]

    add(f"run-{label}", build, *fragments)


pipeline_case("quantize-type", lambda ws: pipeline_text(ws, extra="quantize:\n  type: q9\n"), "quantize.type")
pipeline_case("merge-shard-size", lambda ws: pipeline_text(ws, extra="merge:\n  max_shard_size: 0\n"),
              "merge.max_shard_size")
pipeline_case("merge-shard-words", lambda ws: pipeline_text(ws, extra="merge:\n  max_shard_size: huge\n"),
              "merge.max_shard_size")
pipeline_case("sft-data-missing", lambda ws: pipeline_text(ws, sft_data="gone.jsonl"), "gone.jsonl", "not found")
pipeline_case("dpo-data-missing", lambda ws: pipeline_text(ws, dpo_data="gone.jsonl"), "gone.jsonl", "not found")
pipeline_case("sft-data-malformed", lambda ws: pipeline_text(ws, sft_data=ws.write("bad.jsonl", "{x\n")),
              "bad.jsonl line 1", "malformed JSON")
pipeline_case("dpo-data-malformed", lambda ws: pipeline_text(ws, dpo_data=ws.write("bad.jsonl", "[1]\n")),
              "bad.jsonl line 1")
pipeline_case("dpo-data-rows", lambda ws: pipeline_text(ws, dpo_data=ws.write(
    "same.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "a"}\n')), "same.jsonl", "identical")
pipeline_case("sft-data-rows", lambda ws: pipeline_text(ws, sft_data=ws.write(
    "rows.jsonl", '{"messages": [{"role": "user", "content": "q"}]}\n')), "rows.jsonl", "row 1")
pipeline_case("sft-eval-missing", lambda ws: pipeline_text(ws).replace(
    "    train: chats.jsonl\n", "    train: chats.jsonl\n    eval: gone.jsonl\n", 1), "gone.jsonl")
pipeline_case("sft-lora-bool", lambda ws: pipeline_text(ws, extra="").replace("  train:\n    max_steps: 1\n",
                                                                              "  lora:\n    r: true\n  train:\n"
                                                                              "    max_steps: 1\n", 1), "sft.lora.r")
pipeline_case("root-empty", lambda ws: pipeline_text(ws, root=""), "root")
pipeline_case("root-dot", lambda ws: pipeline_text(ws, root="."), "names no folder")
pipeline_case("root-dot-dot", lambda ws: pipeline_text(ws, root=".."), "names no folder")
pipeline_case("root-cwd", lambda ws: pipeline_text(ws, root=str(ws.root)), "current folder")
pipeline_case("root-is-file", lambda ws: pipeline_text(ws, root="afile"), "afile", "is a file",
              before=lambda ws: ws.write("afile", "x"))
pipeline_case("root-under-file", lambda ws: pipeline_text(ws, root="afile/p"), "afile",
              before=lambda ws: ws.write("afile", "x"))
pipeline_case("root-sys", lambda ws: pipeline_text(ws, root="/sys/lorakit-fuzz"), "/sys/lorakit-fuzz")
pipeline_case("stages-unknown", lambda ws: pipeline_text(ws, stages="[sft, rlhf]"), "stages")
pipeline_case("stages-scalar", lambda ws: pipeline_text(ws, stages="sft"), "stages")
pipeline_case("no-sft-section", lambda ws: "stage: pipeline\nroot: p\nstages: [sft]\n", "no 'sft' section")
for label, state in [("garbage", "{oops"), ("list", "[1, 2]"), ("non-utf8", b'{"sft": "\xff"}'),
                     ("record-number", '{"sft": 5}'), ("record-key-list", '{"sft": {"key": [1]}}'),
                     ("deep", '{"a": ' + "[" * 2000 + "]" * 2000 + "}"), ("empty", "")]:
    pipeline_case(f"state-{label}", lambda ws: pipeline_text(ws), "p/pipeline.json", "is damaged",
                  before=lambda ws, state=state: ws.write("p/pipeline.json", state))


def _only_unknown(ws):
    ws.write("pipe.yaml", pipeline_text(ws))
    return ["run", "pipe.yaml", "--only", "eval"]


add("run-only-unknown", _only_unknown, "stage 'eval' is not in this pipeline")


# ---------------------------------------------------------------------------------------------------------------
# vram-estimate on a config.json (its reader is lorakit.vram.resolve's)

TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 176, "vocab_size": 1024}


def vram_case(label: str, make: Callable[[Workspace], str | bytes], *fragments: str) -> None:
    add(f"vram-config-{label}", lambda ws: ["vram-estimate", ws.write("m/config.json", make(ws))],
        "config.json", *fragments)


def _config(**changes) -> str:
    return json.dumps({**TINY_CONFIG, **changes})


vram_case("list", lambda ws: "[1, 2]")
vram_case("garbage", lambda ws: "{oops")
vram_case("non-utf8", lambda ws: b'{"model_type": "ll\xffama"}', "UTF-8")
vram_case("deep", lambda ws: '{"a": ' + "[" * 3000 + "]" * 3000 + "}")
vram_case("big-int", lambda ws: _config(hidden_size=int("9" * 50)).replace("9" * 50, "9" * 5000))
vram_case("string-size", lambda ws: _config(hidden_size="64"), "hidden_size")
vram_case("zero-heads", lambda ws: _config(num_attention_heads=0), "num_attention_heads")
vram_case("negative-size", lambda ws: _config(intermediate_size=-1), "intermediate_size")
vram_case("bool-layers", lambda ws: _config(num_hidden_layers=True), "num_hidden_layers")
vram_case("missing-vocab", lambda ws: json.dumps({k: v for k, v in TINY_CONFIG.items() if k != "vocab_size"}),
          "vocab_size")
vram_case("empty", lambda ws: "")


def _eval_prompts(ws):
    ws.copy_run("sftrun")
    ws.write("prompts.txt", b"What is 2 plus 2?\ncaf\xe9\n")
    return ["eval", "sftrun", "--prompts", "prompts.txt", "--no-base"]


add("eval-prompts-non-utf8", _eval_prompts, "prompts.txt", "not UTF-8")
