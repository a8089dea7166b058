# runwarden: `make run` runs the service on the embedded default; `make test` passes the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup run test lint bench chaos servers clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/runwarden up

servers:
	scripts/ensure-servers

test: setup servers
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup servers
	$(BIN)/python -m benchmarks

# 1,000 runs through real workers with every fault at once (CHAOS_ARGS="--seed 3 --quick").
chaos: setup servers
	$(BIN)/python -m chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
