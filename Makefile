# The two commands of the README: `make run` and `make test`. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PROTO := proto/patternstore/v1/patternstore.proto

.PHONY: run test lint typecheck proto bench bench-codecs chaos soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

## Start the server on the embedded default (SQLite under ./data).
run: $(VENV)/.run-installed
	$(BIN)/patternstore-server

## Lint, type-check and run the whole test suite.
test: $(VENV)/.test-installed lint typecheck
	$(BIN)/python -m pytest -q

lint: $(VENV)/.test-installed
	$(BIN)/ruff check server client tests loadtest

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy --strict server/patternstore_server client/patternstore

## Regenerate the committed stubs from the .proto (a test fails when they are stale).
proto: $(VENV)/.test-installed
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=client --pyi_out=client \
		--grpc_python_out=client $(PROTO)

## Every README performance figure beside its baseline (needs h2load and redis-server);
## prints the table and writes bench-results.json. BENCH_ARGS="--rss-patterns 200000" runs quicker.
bench: $(VENV)/.test-installed
	$(BIN)/python loadtest/bench.py $(BENCH_ARGS)

## Compression ratios of the codecs vs zlib-6 and raw, on a generated corpus.
bench-codecs: $(VENV)/.test-installed
	$(BIN)/python loadtest/bench_codecs.py

## The crash harness for longer: 200 kill -9 rounds (CHAOS_SEED=... replays one).
chaos: $(VENV)/.test-installed
	CHAOS_ROUNDS=200 $(BIN)/python -m pytest -q -s tests/chaos

## A mixed load for 30 minutes (MINUTES=...), printing RSS, p99 and WAL size each minute.
MINUTES ?= 30
soak: $(VENV)/.run-installed
	$(BIN)/python loadtest/soak.py --minutes $(MINUTES)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
