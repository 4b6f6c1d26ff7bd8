# Quick start: `make demo` (the main job on the local sandbox) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_TASKS_DEFAULT_NO_CACHE := true

.PHONY: install system-deps lint typecheck test test-long unit demo sandbox-up sandbox-down bench bench-compare clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

system-deps:
	./scripts/system-deps.sh

## The whole suite: unit tests and the real stack (Cassandra 4.1 and 5.0, Elasticsearch, sshd, S3, Prefect).
# Its own temp root: pytest's shared /tmp/pytest-of-$USER is re-locked (0700) by any other pytest
# session, which would cut the Elasticsearch user off from its files mid-run.
TEST_TMP ?= /tmp/thehive-backup-tests
# Two pytest-xdist workers, each with its own stack on its own loopback /24 (tests/conftest.py);
# whole files go to one worker, so a module's fixtures are built once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install system-deps lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not long" --basetemp=$(TEST_TMP) $(PYTEST_ARGS)

## The long stack tests `make test` leaves out (marked `long`): about 35 worker-minutes.
test-long: install system-deps
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m long --basetemp=$(TEST_TMP) $(PYTEST_ARGS)

## Lint (ruff, settings in pyproject.toml): part of `make test`.
lint: install
	$(BIN)/ruff check .

## Types (mypy, settings in pyproject.toml, on the product's code): part of `make test`.
typecheck: install
	$(BIN)/mypy flows tasks config deployments

## Fast tests only (no services).
unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## Bring the sandbox up, run the main job on it through a local Prefect server, print the report.
demo: install system-deps
	$(BIN)/python -m deployments.demo

sandbox-up: install system-deps
	$(BIN)/python -m tests.stack.sandbox up

sandbox-down: install
	$(BIN)/python -m tests.stack.sandbox down

bench: install system-deps
	$(BIN)/python -m benchmarks.throughput $(BENCH_ARGS)

## Issue 9's side-by-side benchmark (raw copy, the guide, ours full/incremental, Medusa, restores).
bench-compare: install system-deps
	$(BIN)/python -m benchmarks.compare $(BENCH_ARGS)

clean: sandbox-down
	rm -rf $(VENV) .sandbox
