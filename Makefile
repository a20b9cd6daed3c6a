# Resguardo: `make demo` runs a backup and a verified restore end to end on a
# throwaway PostgreSQL; `make test` runs the test suite. Both set up the
# machine first (deploy/setup.sh).

VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench i18n-check lint clean

setup:
	@bash deploy/setup.sh

demo: setup
	$(BIN)/python -m demo.run

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not airflow and not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/bench_backup.py

i18n-check: setup
	$(BIN)/python -m pytest tests/test_i18n.py

clean:
	rm -rf .demo .pytest_cache
