"""Calibration rows for GPTQ / AWQ: chats from the run's own training data (or --calibration-data), rendered through
the model's chat template, so the quantizer sees the token statistics the model will serve.

Checked before any work: a run whose data is gone and no --calibration-data, or fewer than MIN_ROWS usable rows,
is one clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.console import warn
from lorakit.data.formats import load_sft_examples
from lorakit.data.load import load_rows
from lorakit.errors import DataError, LorakitError
from lorakit.export.logit_gap import run_conversations
from lorakit.outputs import training_run_behind

DEFAULT_ROWS = 256  # llm-compressor's examples use 256-512; a few hundred chats are enough for a 7B's Hessians
MIN_ROWS = 16  # below this GPTQ's Hessian estimates are noise (and AWQ's scales overfit)
MAX_TOKENS = 512  # per row: chats longer than this are cut (the statistics settle well before)


@dataclass(frozen=True)
class CalibrationRequest:
    data: str | None = None  # chats in any SFT format lorakit reads; None: the run's own training data
    rows: int = DEFAULT_ROWS


@dataclass
class CalibrationRows:
    rows: list[list[int]]
    origin: str

    def record(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "tokens": sum(len(r) for r in self.rows), "source": self.origin,
                "max_tokens_per_row": MAX_TOKENS}


def conversations_of(rows) -> list[list[dict[str, Any]]]:
    return [list(r["messages"]) or [{"role": "user", "content": r["prompt"] + r["completion"]}] for r in rows]


def calibration_rows(folder: Path, tokenizer, request: CalibrationRequest) -> CalibrationRows:
    """Token ids of up to `request.rows` chats for the model at (or behind) `folder`."""
    if request.rows < MIN_ROWS:
        raise DataError(f"--calibration-rows {request.rows} is below the {MIN_ROWS} rows GPTQ/AWQ need",
                        hint=f"use the default ({DEFAULT_ROWS}) or at least {MIN_ROWS}")
    if request.data:
        try:
            loaded = load_rows(request.data, max_rows=request.rows)
            examples, _ = load_sft_examples(loaded, "auto", {}, None)
        except LorakitError as exc:
            raise DataError(f"--calibration-data {request.data}: {exc.message}", hint=exc.hint) from None
        conversations, origin = conversations_of(examples), f"--calibration-data {request.data}"
    else:
        run = training_run_behind(folder)
        if run is None:
            raise DataError(f"{folder} has no training run behind it to draw calibration chats from",
                            hint="pass --calibration-data FILE (chats in any format lorakit trains on)")
        try:
            conversations = run_conversations(run, request.rows)
        except LorakitError as exc:
            raise DataError(f"the training data of {run.path} cannot be read for calibration: {exc.message}",
                            hint="pass --calibration-data FILE (chats in any format lorakit trains on)") from None
        origin = f"the training data of {run.path} ({run.recipe.data.train})"
    rows = []
    for messages in conversations:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            text = "\n\n".join(str(m["content"]) for m in messages)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
        if len(ids) > 1:
            rows.append(ids)
    if len(rows) < MIN_ROWS:
        raise DataError(f"calibration data has {len(rows)} usable row(s) ({origin}); GPTQ/AWQ need at least "
                        f"{MIN_ROWS}", hint="pass --calibration-data with more chats, or use --method rtn "
                                            "(no calibration)")
    if len(rows) < request.rows:
        warn(f"calibrating on {len(rows)} rows ({origin} has no more; {request.rows} asked)")
    return CalibrationRows(rows, origin)
