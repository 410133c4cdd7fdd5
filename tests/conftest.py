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
