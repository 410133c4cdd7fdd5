"""Session fixtures of the fuzz suite: one tiny model and one finished run, built once and only ever copied."""

from __future__ import annotations

import pytest

from .workspace import World, fingerprint


@pytest.fixture(scope="session")
def world(tiny_llama, tmp_path_factory) -> World:
    """A finished SFT run of 2 steps on a few rows (about 10 s), checkpointed at both steps: the material every
    damaged-run case copies. The cases themselves never train."""
    import shutil

    from lorakit.config import load_recipe
    from lorakit.train.sft import run_sft

    from ..conftest import EXAMPLES

    root = tmp_path_factory.mktemp("fuzz-world")
    data = root / "chats.jsonl"
    shutil.copy(EXAMPLES / "chat-messages.jsonl", data)
    overrides = ["data.max_rows=8", "data.max_length=64", "train.micro_batch_size=4",
                 "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false", "train.save_steps=1",
                 "lora.r=4", "lora.alpha=8", "preflight=false"]
    recipe = load_recipe("sft", None, overrides, {"model": str(tiny_llama), "data": str(data),
                                                  "output_dir": str(root / "run"), "max_steps": 2})
    run_sft(recipe)
    return World(model=tiny_llama, run=root / "run")


@pytest.fixture(scope="session")
def world_fingerprint(world):
    return fingerprint(world.run.parent), fingerprint(world.model)
