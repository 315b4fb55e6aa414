# Two entry points: `make demo` (local backend, no cloud account) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= $(CURDIR)/.gemmactl-local

.PHONY: demo test install lint bench-cli clean

$(BIN)/gemmactl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on CPU machines this picks the CPU wheel instead of GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[trainer,dev]'
	@touch $@

install: $(BIN)/gemmactl

demo: install
	GEMMACTL_LOCAL_DIR=$(DEMO_DIR) PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench-cli: install
	$(BIN)/python bench/cli_startup.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
