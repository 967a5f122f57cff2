# lv3ph: two commands do everything on a fresh machine with Python 3.11.
#   make demo   creates .venv, installs lv3ph, runs the main job on the bundled feeder
#   make test   creates .venv, installs lv3ph[test], runs lint and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lv3ph demo

lint: $(STAMP)
	$(BIN)/ruff check lv3ph tests benchmarks studies
	$(BIN)/ruff format --check lv3ph tests benchmarks studies
	$(BIN)/mypy lv3ph

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_powerflow.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
