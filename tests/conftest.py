"""Shared fixtures: tiny models built locally, once per session, and loaded through `from_pretrained`."""

from __future__ import annotations

import os

# A stray hub call must fail at once, not hang: the tests run offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep built-in models and tokenization caches out of the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("lorakit-cache")
    # lorakit's managed tools (llama.cpp's GGUF converter, fetched by `make real-artifacts`) are shared, not rebuilt:
    # a test that finds none fetches it into the temporary cache on first use, as a user's first export does
    from tests.real.artifacts import root as artifacts_root

    if (artifacts_root() / "tools").is_dir():
        (cache / "tools").symlink_to(artifacts_root() / "tools", target_is_directory=True)
    old = os.environ.get("LORAKIT_CACHE")
    os.environ["LORAKIT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LORAKIT_CACHE", None)
    else:
        os.environ["LORAKIT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from lorakit.tiny import TinySpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", TinySpec())


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    from lorakit.tiny import TinySpec, build_tiny_model

    spec = TinySpec(arch="qwen2", tie_word_embeddings=True)
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", spec)


def sft_recipe(output_dir, *overrides: str, **flags):
    """The bundled tiny SFT recipe, pointed at a test folder."""
    from lorakit.config import load_recipe

    return load_recipe("sft", REPO / "recipes" / "tiny-cpu-sft.yaml", list(overrides),
                       {"output_dir": str(output_dir), **flags})


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    """A trained tiny SFT run (LoRA on builtin:tiny-llama), shared by every test that only reads it."""
    from lorakit.train.sft import run_sft

    out = tmp_path_factory.mktemp("runs") / "sft"
    old = os.getcwd()
    os.chdir(REPO)  # the recipe's data paths are relative to the repository
    try:
        result = run_sft(sft_recipe(out, max_steps=150))
    finally:
        os.chdir(old)
    return result


def dpo_recipe(output_dir, from_run, *overrides: str, **flags):
    """The bundled tiny DPO recipe, continuing from `from_run` (None: from the base model), in a test folder."""
    from lorakit.config import load_recipe

    overrides = list(overrides) + ([] if from_run else ["from_run=null"])
    return load_recipe("dpo", REPO / "recipes" / "tiny-cpu-dpo.yaml", overrides,
                       {"output_dir": str(output_dir), "from_run": str(from_run) if from_run else None, **flags})


# Fixtures that train (a real run, seconds to a minute): every test using one is slow, whatever its module says, so
# `make test-fast` (-m "not slow") never trains.
TRAINING_FIXTURES = {"sft_run", "dpo_run", "qlora_run", "merged", "pipeline_root"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
