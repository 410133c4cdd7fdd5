# Set-up and checks on a fresh machine. `make demo` runs the bundled pipeline; `make test` runs the test suite.
# TORCH pins the CPU build that lies on this project's machines; on a CUDA box use e.g. TORCH=torch.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast real-assets

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/lorakit run recipes/tiny-cpu-pipeline.yaml

# llama.cpp's real tokenizers and chat templates (ggml-vocab-*.gguf, models/templates) from the llama-cpp-python sdist
# on PyPI: ~77 MB download, ~25 s, cached in ~/.cache/lorakit. Tests that need them skip without them.
real-assets: setup
	$(BIN)/python -m tests.llama_cpp_assets

test: setup
	-$(BIN)/python -m tests.llama_cpp_assets || echo "llama.cpp test assets unavailable: their tests will skip"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"
