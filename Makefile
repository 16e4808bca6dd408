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

.PHONY: help venv lint format test unit soak figures run bench build security openapi clean

help:
	@echo "make run       local stack: API on 127.0.0.1:3000, SQS pollers, Customer.io sandbox"
	@echo "make test      venv + lint + the whole test suite (the CI gate), a small soak included"
	@echo "make soak      the full soak and backlog runs (tests marked soak); figures to .cache/figures/"
	@echo "make figures   copy the measured figures into docs/ (the only verb that edits docs)"
	@echo "make lint      ruff + mypy"
	@echo "make bench     benchmarks as ratios (report in .cache/figures/; ARGS=--strict, --quick, --only)"
	@echo "make build     sam build (python3.13) + native-extension architecture check"
	@echo "make security  checkov on template.yaml (own venv) + bandit"

RUN_STAMP := $(VENV)/.installed-run
# pip's output cut to one line per package, so a first `make run` shows its progress; errors pass.
PIP_PROGRESS := awk '/^Collecting /{n++; printf "  %3d  %s\n", n, $$2; fflush(); next} \
	/^Processing /{n++; f=$$2; sub(/.*\//, "", f); sub(/-(py|cp)[0-9].*$$/, "", f); \
		printf "  %3d  %s\n", n, f; fflush(); next} \
	/^Successfully installed/{printf "  installed %d packages\n", NF - 2; fflush(); next} \
	/^(Looking in| |WARNING: Location|Requirement already|Installing collected)/{next} \
	{print; fflush()}'

# `make run` needs only the local stack's packages (requirements-run.txt, a subset of the dev pins).
$(RUN_STAMP): requirements-run.txt $(LAYER)/requirements.txt pyproject.toml
	@echo "make run: installing the local stack's pinned packages into $(VENV) (first run only) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --progress-bar off -r requirements-run.txt 2>&1 | $(PIP_PROGRESS); exit $${PIPESTATUS[0]}
	@# The operator CLI as the console script `cio-relay` (editable: it runs this checkout's code).
	@$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

UV_VERSION := 0.13.8
# Everything else (tests, lint, bench) needs the whole dev lock, which includes requirements-run.txt.
$(STAMP): requirements-dev.txt requirements-run.txt $(LAYER)/requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the ~100 pinned packages in parallel: seconds instead of pip's minute.
	$(BIN)/pip install --quiet uv==$(UV_VERSION) 2>&1 | { grep -v '^WARNING: Location' || true; }; exit $${PIPESTATUS[0]}
	$(BIN)/uv pip install --quiet --python $(PY) -r requirements-dev.txt
	@# The operator CLI as the console script `cio-relay` (editable: it runs this checkout's code).
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(RUN_STAMP) $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Test processes in parallel (pytest-xdist): most of the suite waits on sockets and retries, so four
# workers keep two cores busy (measured: 2 min 37 s with 4 workers, about 5 min with 2).
TEST_WORKERS ?= 4

test: lint
	@# pytest exits 5 when it collected nothing: that is a failure, not a pass.
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --durations=15; rc=$$?; if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; exit 1; fi; exit $$rc

# The full soak: it waits on progress (it fails when nothing settles for a minute), not on a timer.
soak: $(STAMP)
	$(BIN)/pytest tests/reliability -m soak --timeout=0

# Figures measured by make test / make soak (in .cache/figures/, ignored) into the docs, on purpose.
figures: $(STAMP)
	$(PY) -m tests.reliability.figures
	$(PY) -m bench.figures

unit: $(STAMP)
	$(BIN)/pytest tests/unit

run: $(RUN_STAMP)
	@$(PY) -m local_stack $(ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

SAM_VENV ?= .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_CLI_VERSION ?= 1.170.0
PYTHON313 ?= python3.13
# pyenv machines select Python 3.13 this way; harmless elsewhere.
SAM_ENV := PYENV_VERSION=$(or $(PYENV_313),3.13.0) SAM_CLI_TELEMETRY=0
# The layer's BuildArchitecture; tests/template checks that the functions agree.
ARCH ?= $(shell sed -n 's/^ *BuildArchitecture: *\([a-z0-9_]*\).*/\1/p' template.yaml)

$(SAM):
	$(SAM_ENV) $(PYTHON313) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==$(SAM_CLI_VERSION) 2>&1 | { grep -v '^WARNING: Location' || true; }; exit $${PIPESTATUS[0]}
	$(SAM) --version

build: $(STAMP) $(SAM)
	$(SAM_ENV) $(SAM) validate --lint
	$(SAM_ENV) $(SAM) build
	$(PY) tests/template/check_build_arch.py $(ARCH)

security: $(STAMP)
	tests/template/run_checkov.sh
	@# bandit over the project's code; its reviewed false positives are listed in the test.
	$(BIN)/pytest tests/security/test_bandit.py

clean:
	rm -rf $(VENV) $(SAM_VENV) .venv-checkov .aws-sam .mypy_cache .pytest_cache .ruff_cache
