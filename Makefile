# cio-relay: small verbs, one gate (`make test`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
LAYER := layers/cio_relay
export PYTHONPATH := $(LAYER):$(CURDIR)
export SAM_CLI_TELEMETRY := 0

.PHONY: help venv lint format test unit run bench build security openapi clean

help:
	@echo "make run       local stack: API on 127.0.0.1:3000, SQS pollers, Customer.io sandbox"
	@echo "make test      venv + lint + the whole test suite (the CI gate)"
	@echo "make lint      ruff + mypy"
	@echo "make bench     benchmarks against the official Customer.io SDKs"
	@echo "make build     sam build (python3.13) + native-extension architecture check"
	@echo "make security  checkov on template.yaml (own venv) + bandit"

$(STAMP): requirements-dev.txt $(LAYER)/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/pip install --quiet -r requirements-dev.txt 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	@# pytest exits 5 when it collected nothing: that is a failure, not a pass.
	$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; exit 1; fi; exit $$rc

unit: $(STAMP)
	$(BIN)/pytest tests/unit

run: $(STAMP)
	$(PY) -m tests.local_stack $(ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .aws-sam .mypy_cache .pytest_cache .ruff_cache
