"""Writes the bundled example datasets (every supported format) and the tiny tokenizer's training corpus.

The data is synthetic and deterministic: short factual question/answer pairs a tiny model can memorize on a CPU in
minutes, so the whole pipeline (sft -> dpo -> merge -> quantize) can be checked end to end without downloads.
Re-run with `python examples/make_examples.py` after editing; the outputs are committed.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CORPUS = HERE.parent / "lorakit" / "assets" / "tiny_corpus.txt"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Cuba": "Havana", "India": "Delhi", "China": "Beijing",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "early": "late",
    "open": "closed", "full": "empty", "happy": "sad", "old": "new", "wet": "dry", "near": "far",
}
COLORS = {
    "the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow", "coal": "black",
    "a tomato": "red", "an orange": "orange", "a plum": "purple",
}
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def qa_pairs() -> list[tuple[str, str, str]]:
    """(question, correct answer, plausible wrong answer) triples."""
    rng = random.Random(0)
    capitals = list(CAPITALS.values())
    pairs = []
    for country, city in CAPITALS.items():
        wrong = rng.choice([c for c in capitals if c != city])
        pairs.append((f"What is the capital of {country}?", f"The capital of {country} is {city}.",
                      f"The capital of {country} is {wrong}."))
    for word, opposite in OPPOSITES.items():
        pairs.append((f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}.",
                      f"The opposite of {word} is {word}."))
    colors = sorted(set(COLORS.values()))
    for thing, color in COLORS.items():
        wrong = rng.choice([c for c in colors if c != color])
        pairs.append((f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}.",
                      f"{thing[0].upper() + thing[1:]} is {wrong}."))
    for a, b in [(2, 3), (4, 5), (1, 6), (3, 3), (7, 2), (5, 4), (6, 6), (8, 1), (9, 3), (2, 7)]:
        pairs.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + 1}."))
    return pairs


EVASIONS = ["I do not know.", "I am not sure about that.", "Sorry, I cannot answer that.", "Ask me something else."]


def rejected_answers(pairs: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The preference data's (question, chosen, rejected): the rejected answer dodges the question, answers a question
    of another kind, or is a bare word instead of the one short sentence the system prompt asks for. Those are
    mistakes a model can learn to avoid on questions it has never seen; a wrong fact is not: a tiny model trained
    from scratch cannot know the capital of a country missing from its training data, so a held-out pair that
    differs only in the fact measures noise."""
    out = []
    for i, (question, answer, _) in enumerate(pairs):
        kind = i % 3
        if kind == 0:
            rejected = EVASIONS[(i // 3) % len(EVASIONS)]
        elif kind == 1:  # the answer to the nearest question of another kind (capital, opposite, color, sum)
            others = [a for q, a, _ in pairs[i + 1:] + pairs[:i] if question_kind(q) != question_kind(question)]
            rejected = others[0]
        else:  # the answer's last word alone: "Lima." for "The capital of Peru is Lima."
            rejected = answer.rstrip(".").split()[-1].capitalize() + "."
        out.append((question, answer, rejected))
    return out


def question_kind(question: str) -> str:
    return next(word for word in ("capital", "opposite", "color", "plus") if word in question)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    pairs = qa_pairs()
    rng = random.Random(1)
    held_out = set(rng.sample(range(len(pairs)), 6))
    train = [p for i, p in enumerate(pairs) if i not in held_out]
    test = [p for i, p in enumerate(pairs) if i in held_out]

    messages = []
    for i, (q, a, _) in enumerate(train):
        turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 4 == 0:
            turns.insert(0, {"role": "system", "content": SYSTEM})
        messages.append({"messages": turns})
    # A few two-turn conversations, so multi-turn masking is exercised by the default run.
    for (q1, a1, _), (q2, a2, _) in zip(train[0:6], train[20:26]):
        messages.append({"messages": [
            {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
            {"role": "user", "content": q2}, {"role": "assistant", "content": a2},
        ]})
    write_jsonl(DATA / "chat-messages.jsonl", messages)
    write_jsonl(DATA / "chat-messages-test.jsonl",
                [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                 for q, a, _ in test])

    sharegpt = [{"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": q},
                                   {"from": "gpt", "value": a}]} for q, a, _ in train]
    (DATA / "chat-sharegpt.json").write_text(json.dumps(sharegpt, indent=1) + "\n")

    alpaca = [{"instruction": q, "input": "", "output": a} for q, a, _ in train[:20]]
    alpaca += [{"instruction": "Answer the question.", "input": q, "output": a} for q, a, _ in train[20:]]
    (DATA / "alpaca.json").write_text(json.dumps(alpaca, indent=1) + "\n")

    with open(DATA / "prompt-completion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "completion"])
        for q, a, _ in train:
            writer.writerow([f"Question: {q}\nAnswer:", f" {a}"])
    write_jsonl(DATA / "prompt-completion.jsonl",
                [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
                 for q, a, _ in train])
    write_jsonl(DATA / "text.jsonl", [{"text": f"Question: {q}\nAnswer: {a}"} for q, a, _ in train])
    table = pa.Table.from_pylist([{"messages": m["messages"]} for m in messages])
    pq.write_table(table, DATA / "chat-messages.parquet")

    # Preference data: the chosen answer is the correct one, the rejected one dodges, answers another question or
    # echoes the question (rejected_answers). The tokenizer's corpus below keeps the earlier wrong facts, so the
    # built-in model's tokenizer (and every cached build of it) stays the same.
    corpus_pairs = pairs
    train, test = rejected_answers(train), rejected_answers(test)
    write_jsonl(DATA / "prefs.jsonl", [{"prompt": q, "chosen": a, "rejected": r} for q, a, r in train])
    write_jsonl(DATA / "prefs-test.jsonl", [{"prompt": q, "chosen": a, "rejected": r} for q, a, r in test])
    write_jsonl(DATA / "prefs-ultrafeedback.jsonl", [{
        "prompt": q,
        "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
    } for q, a, r in train])
    write_jsonl(DATA / "prefs-implicit.jsonl", [{
        "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
    } for q, a, r in train])
    write_jsonl(DATA / "prefs-hh.jsonl", [{
        "chosen": f"\n\nHuman: {q}\n\nAssistant: {a}",
        "rejected": f"\n\nHuman: {q}\n\nAssistant: {r}",
    } for q, a, r in train])
    write_jsonl(DATA / "prefs-sqcr.jsonl", [{"system": SYSTEM, "question": q, "chosen": a, "rejected": r}
                                            for q, a, r in train])

    corpus = [SYSTEM] + [f"{q}\n{a}\n{r}" for q, a, r in corpus_pairs]
    corpus += [f"Question: {q}\nAnswer: {a}" for q, a, _ in corpus_pairs]
    corpus.append("user assistant system Human Assistant Answer the question. 0 1 2 3 4 5 6 7 8 9 10 11 12")
    CORPUS.write_text("\n".join(corpus) + "\n")


if __name__ == "__main__":
    main()
