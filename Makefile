# The README's commands. Each runs the set-up first (idempotent, quick when nothing changed).
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: setup demo suite test lint typecheck unit clean

setup:
	@bash scripts/setup.sh

## demo: bring the stack up, run three shipped experiments, print the verdicts, stop everything
demo: setup
	@$(VENV)/testbed demo

## suite: the whole experiment catalogue, each on a fresh stack (about 16 min on 2 cores)
suite: setup
	@$(VENV)/testbed chaos suite

## test: lint, type-check and run the whole test suite (real processes, real Toxiproxy/Prometheus)
test: setup
	@echo "== ruff (lint, incl. ASYNC rules)"
	@$(VENV)/ruff check .
	@$(VENV)/ruff format --check . >/dev/null || { $(VENV)/ruff format --check .; exit 1; }
	@echo "== mypy (strict)"
	@$(VENV)/mypy
	@echo "== pytest"
	@$(VENV)/pytest -q -ra $(PYTEST_ARGS)

lint: setup
	@$(VENV)/ruff check . && $(VENV)/ruff format --check .

typecheck: setup
	@$(VENV)/mypy

## unit: the fast tests only (no multi-process stack)
unit: setup
	@$(VENV)/pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf .venv tools runs .mypy_cache .ruff_cache .pytest_cache
