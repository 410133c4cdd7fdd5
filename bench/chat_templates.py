"""Released chat templates through lorakit's real data path: the survey and the family table of docs/chat-templates.md.

    python bench/chat_templates.py                 # docs/chat-templates.md: masks, stop token, Ollama template
    python bench/chat_templates.py --survey DIR    # every DIR/*.jinja (llama.cpp's models/templates) on the
                                                   # bundled chats: data check, stop token, masks, or the refusal

Tokenizers are the families' real ones (llama.cpp's ggml-vocab-*.gguf, `make real-assets`) or the closest real one
with the template's special tokens added; `--tiny` uses lorakit's tiny built-in tokenizer instead (no assets).
"Masks ok" is measured against each family's own output format (tests/families.py): for a one-turn chat, a two-turn
chat and, where the template renders tools, a tool call with its result, the trained tokens must be exactly what the
model writes after its generation prompt, through its stop token, and nothing of system, user or tool turns.
"Ollama template": the Modelfile TEMPLATE rendered with Go's text/template as Ollama executes it (when `go` is
installed) must equal the Jinja template's prompt on 6 chats (n/n that do).
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


def family_row(family: fam.Family, real: bool) -> dict:
    """One row of the docs/chat-templates.md table (the llama.cpp column is filled by the GGUF/llama.cpp checks)."""
    from lorakit.chat_template import stop_convention
    from lorakit.errors import LorakitError
    from lorakit.export.modelfile import modelfile

    tokenizer = fam.family_tokenizer(family, real=real)
    row = {"family": family.name,
           "tokenizer": (family.vocab + ("" if family.own_vocab else " + template specials")) if real else "tiny"}
    if tokenizer is None:
        return {**row, "masks ok": "skipped (no assets)", "stop token": "", "Ollama template": "",
                "llama.cpp tokens match": ""}
    try:
        convention = stop_convention(tokenizer)
        ok, why = fam.check_masks(family, tokenizer)
        tools = {False: " (no tool-call format: tool rows refused by number)",
                 "partial": " (a second tool-call turn is refused: the template drops its opener)"}.get(family.tools, "")
        row["masks ok"] = ("yes" + tools) if ok else f"NO: {why}"
        stop = convention.token
        if convention.how == "next-turn":
            stop += " (next turn's opener)" if convention.opens_next_turn else " (written before a next turn)"
        if convention.tool_call_token:
            stop += f"; tool calls {convention.tool_call_token}"
        row["stop token"] = stop
    except LorakitError as exc:
        row["masks ok"], row["stop token"] = f"refused: {exc.message}", ""
    try:
        text, description = modelfile("model.gguf", None, tokenizer=tokenizer)
        template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
        if fam.go_available():
            cases = fam.ollama_chats(family.system)
            rendered = fam.go_render(template, cases)
            same = sum(r == fam.hf_prompt(tokenizer, m, t) for r, (m, t) in zip(rendered, cases))
            verdict = f"yes ({same}/{len(cases)})" if same == len(cases) else f"NO ({same}/{len(cases)})"
        else:
            verdict = "yes (pieces checked; Go not installed)"
        if "today's date" in description:
            verdict += "; export date written in"
        if "no system role" in description:
            verdict += "; no system role"
        row["Ollama template"] = verdict
    except LorakitError as exc:
        row["Ollama template"] = f"no: {exc.message}"
    row["llama.cpp tokens match"] = llama_cpp_tokens(family) if real else ""
    return row


def llama_cpp_tokens(family: fam.Family) -> str:
    """Does llama.cpp cut text as training does? For a family whose own vocabulary llama.cpp ships: the vocabulary
    as lorakit unpacks a GGUF (tests/real/artifacts.py) against llama.cpp's own test vectors (.inp/.out), and
    llama.cpp (vocab-only, special tokens parsed) against that tokenizer on the family's rendered chats."""
    if not family.own_vocab:
        return "n/a (closest vocabulary)"
    try:
        from llama_cpp import Llama
    except ImportError:
        return "skipped (llama-cpp-python not installed)"
    from tests.real import artifacts
    from tests.real.vocabs import vectors

    path = artifacts.models_dir() / f"ggml-vocab-{family.vocab}.gguf"
    # the family's own vocabulary as unpacked, with only its template: dress_tokenizer re-adds the special tokens
    # without their flags (Phi-3's rstrip), which is not how the release's tokenizer cuts text
    tokenizer = artifacts.vocab_tokenizer(family.vocab)
    tokenizer.chat_template = fam.template_text(family)
    ours = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = vectors(family.vocab) if path.with_name(path.name + ".inp").is_file() else []
    texts_ok = sum(ours(text) == ids for text, ids in pairs)
    chats = []
    for messages in (fam.chat(), fam.chat(system=False), fam.two_turns()):
        try:
            chats.append(tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception:  # a template that refuses a system turn: the others still count
            continue
    llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        chats_ok = sum(llama.tokenize(text.encode(), add_bos=False, special=True) == ours(text) for text in chats)
    finally:
        llama.close()
    verdict = "yes" if texts_ok == len(pairs) and chats_ok == len(chats) else "NO"
    rendered = f"{chats_ok}/{len(chats)} chats" if chats else "no plain chat renders"
    return f"{verdict} ({texts_ok}/{len(pairs)} test texts, {rendered})"


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
