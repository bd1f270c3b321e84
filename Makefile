# Faregate — one entry point for people and CI.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROTOS  := $(shell find protos -name '*.proto')
PB      := faregate/pb/.generated

.PHONY: setup proto run test test-infra check lint bench faults clean

setup: $(STAMP) $(PB)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(PB): $(STAMP) $(PROTOS) scripts/gen_protos.py
	$(BIN)/python scripts/gen_protos.py
	touch $@

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py
	touch $(PB)

## make run: set up on first use, then start every service in the foreground (Ctrl-C stops all)
run: setup
	$(BIN)/faregate up

## make test: set up on first use, then run the whole suite
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-infra: the suite against the machine's PostgreSQL, Redis and NATS
test-infra: setup
	FAREGATE_TEST_DATABASE_URL=$${FAREGATE_TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres} \
	FAREGATE_TEST_REDIS_URL=$${FAREGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379/0} \
	FAREGATE_TEST_NATS_URL=$${FAREGATE_TEST_NATS_URL:-nats://127.0.0.1:4222} \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy faregate services
	$(BIN)/lint-imports

## make check: ruff, mypy, import contracts, then the tests
check: lint test

## make bench: the side-by-side benchmark (see bench/README.md)
bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run

## make faults: the fault drill (tests/drill): kills under load, then the reconciliation table
## (FAREGATE_DRILL_SEED replays a run; DRILL_ARGS, e.g. --setups embedded, passes options)
faults: setup
	$(BIN)/python -m tests.drill $(DRILL_ARGS)

clean:
	rm -rf $(VENV) faregate/pb/*/ $(PB) .pytest_cache .mypy_cache .ruff_cache
