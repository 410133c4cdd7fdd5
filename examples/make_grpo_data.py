"""Writes the prompt sets of the GRPO examples: verifiable tasks with a reference answer per prompt.

- `data/grpo-capitals.jsonl` / `-test.jsonl`: the bundled tiny model's questions (it learned them in the tiny SFT
  recipe), with the reply it should give as the `answer`; the tiny GRPO recipe sharpens a policy that gets them right
  only some of the time when sampling.
- `data/smollm2/arith-train.jsonl` / `-test.jsonl`: one-digit arithmetic for SmolLM2-135M-Instruct, each reply asked
  to end with `Answer: <number>`, and `arith-sft.jsonl`, the first 40 training prompts answered in that format (the
  SFT stage of recipes/smollm2-135m-cpu-grpo.yaml). GRPO needs a parent that solves these sometimes: groups whose
  completions differ in reward. The held-out split shares no (a, op, b) triple with the training split.

Deterministic (fixed seeds); re-run with `python examples/make_grpo_data.py` after editing; the outputs are
committed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Cuba": "Havana", "India": "Delhi", "China": "Beijing",
}
HELD_OUT_CAPITALS = ("Peru", "Greece", "Cuba", "India")

ARITH_INSTRUCTION = "End your reply with 'Answer: ' and the number."


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def capitals() -> tuple[list[dict], list[dict]]:
    rows = [{"prompt": f"What is the capital of {country}?", "answer": f"The capital of {country} is {city}."}
            for country, city in CAPITALS.items()]
    held_out = [r for r in rows if any(f" {c}?" in r["prompt"] for c in HELD_OUT_CAPITALS)]
    return [r for r in rows if r not in held_out], held_out


def arithmetic(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Every a + b and a - b (a >= b) with one-digit a, b; split by a fixed shuffle."""
    triples = [(a, "+", b) for a in range(10) for b in range(10)]
    triples += [(a, "-", b) for a in range(10) for b in range(10) if a >= b]
    random.Random(seed).shuffle(triples)
    rows = []
    for a, op, b in triples:
        value = a + b if op == "+" else a - b
        words = "plus" if op == "+" else "minus"
        rows.append({"prompt": f"What is {a} {words} {b}? {ARITH_INSTRUCTION}", "answer": str(value)})
    return rows[40:], rows[:40]


def arithmetic_chats(train: list[dict], count: int = 40) -> list[dict]:
    """A light SFT set for the SmolLM2 pipeline: the format (a short sum, then `Answer: N`) on the first `count`
    training prompts only, so GRPO's held-out prompts stay unseen by both stages."""
    chats = []
    for row in train[:count]:
        question = row["prompt"].split("?")[0].removeprefix("What is ")
        chats.append({"messages": [{"role": "user", "content": row["prompt"]},
                                   {"role": "assistant", "content": f"{question} is {row['answer']}.\n"
                                                                     f"Answer: {row['answer']}"}]})
    return chats


def main() -> None:
    train, test = capitals()
    write_jsonl(DATA / "grpo-capitals.jsonl", train)
    write_jsonl(DATA / "grpo-capitals-test.jsonl", test)
    train, test = arithmetic()
    write_jsonl(DATA / "smollm2" / "arith-train.jsonl", train)
    write_jsonl(DATA / "smollm2" / "arith-test.jsonl", test)
    write_jsonl(DATA / "smollm2" / "arith-sft.jsonl", arithmetic_chats(train))


if __name__ == "__main__":
    main()
