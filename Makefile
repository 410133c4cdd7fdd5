# Set-up and checks on a fresh machine. `make demo` runs the bundled pipeline; `make test` runs the test suite.
# TORCH pins the CPU build that lies on this project's machines; on a CUDA box use e.g. TORCH=torch.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast real-assets test-browser test-loggers

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

# llama.cpp's real tokenizers and chat templates (ggml-vocab-*.gguf, models/templates) from the llama-cpp-python sdist
# on PyPI: ~77 MB download, ~25 s, cached in ~/.cache/lorakit. Tests that need them skip without them.
real-assets: setup
	$(BIN)/python -m tests.llama_cpp_assets

test: setup
	-$(BIN)/python -m tests.llama_cpp_assets || echo "llama.cpp test assets unavailable: their tests will skip"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

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
