"""Commands print lorakit's own progress and the warnings a user can act on, not the chatter of the libraries under
it. Each line below was printed by every command of a kind, and none says anything a user can act on:

- `Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in
  offline mode.`: the `kernels` package, at every bitsandbytes import on an AVX512-BF16 CPU while offline (sft, dpo,
  merge, generate, eval of adapters, env); dropped by lorakit.compat.quiet_bitsandbytes_cpu_kernel_advice.
- tqdm bars `Converting and de-quantizing GGUF tensors...`: transformers' GGUF loader, whenever a GGUF is unpacked as a
  base (sft/dpo/vram-estimate on a .gguf) or loaded to verify or evaluate an export (quantize, run, eval); routed
  through transformers' progress-bar switch by lorakit.compat.route_gguf_loading_bar.
- `Unknown separator token '<|begin_of_text|>' in TemplateProcessing<pair>`: gguf-py guessing BOS/SEP flags from a
  Llama-3-style tokenizer.json whenever one is written to GGUF (quantize, run); lorakit writes those flags itself
  (lorakit.export.gguf_vocab).
setuptools' package-data warning on `pip install -e .` is covered by tests/unit/test_packaging.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

NOISE = [re.compile(pattern) for pattern in (
    r"Skipping publisher trust check",
    r"in TemplateProcessing<",
    r"Converting and de-quantizing GGUF tensors",
    r"it/s\]|s/it\]",  # any tqdm bar
)]


def library_noise(stderr: str) -> list[str]:
    """The lines of a command's stderr that are library chatter (also used by the README walk)."""
    return [line for line in stderr.splitlines() if any(p.search(line) for p in NOISE)]


def lorakit(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if cache is not None:
        env["LORAKIT_CACHE"] = str(cache)
    result = subprocess.run([sys.executable, "-m", "lorakit", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from lorakit.export.gguf_export import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    write_gguf(tiny_llama, path, "q8_0", AutoTokenizer.from_pretrained(tiny_llama))
    return path


@pytest.mark.slow
def test_a_tiny_sft_run_prints_its_own_progress_and_no_library_chatter(tmp_path):
    stderr = lorakit("sft", "--recipe", "recipes/tiny-cpu-sft.yaml", "--max-steps", "2", "-o",
                     str(tmp_path / "sft")).stderr
    assert library_noise(stderr) == [], stderr
    assert "Data: 50 examples" in stderr and "SFT step 2/2" in stderr  # lorakit's own lines stay


@pytest.mark.slow
def test_a_run_on_a_gguf_unpacks_it_without_library_chatter(tiny_gguf, tmp_path):
    cache = tmp_path / "cache"  # its own cache, so the GGUF is unpacked here whatever ran before
    stderr = lorakit("sft", "--recipe", "recipes/tiny-cpu-sft.yaml", "--model", str(tiny_gguf), "--max-steps", "1",
                     "-o", str(tmp_path / "sft"), cache=cache).stderr
    assert list((cache / "models").glob("gguf-tiny-llama.Q8_0-*")), "the GGUF was unpacked in this run"
    assert library_noise(stderr) == [], stderr
    assert "tiny-llama.Q8_0.gguf is quantized (Q8_0)" in stderr  # the note a user should read stays


def test_writing_a_llama3_style_tokenizer_to_gguf_logs_no_flag_guesses(tiny_llama, tmp_path, caplog):
    """gguf-py's guesses are dropped while lorakit writes the vocabulary; its other warnings still reach the user."""
    from transformers import AutoTokenizer

    from lorakit.export.gguf_export import write_gguf
    from lorakit.export.gguf_vocab import GGUF_VOCAB_LOGGER, _template_guesses_dropped

    pair = json.loads((tiny_llama / "tokenizer.json").read_text())["post_processor"]["pair"]
    assert "SpecialToken" in pair[2]  # "<|begin_of_text|> $A <|begin_of_text|> $B": what gguf-py cannot parse
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with caplog.at_level(logging.WARNING):
        write_gguf(tiny_llama, tmp_path / "tiny.gguf", "f16", tokenizer)
        with _template_guesses_dropped():
            logging.getLogger(GGUF_VOCAB_LOGGER).warning("Adding merges requested but no merges found")
    messages = [r.getMessage() for r in caplog.records if r.name == GGUF_VOCAB_LOGGER]
    assert messages == ["Adding merges requested but no merges found"]
