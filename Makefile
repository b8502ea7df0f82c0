# wflo-jupyter: every target works from a fresh clone, as root, with no manual step.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test install lock upgrade-check docker runtime-image services lint unit bench clean \
	litellm-venv

## install + start the local stack + run the quickstart notebook + print its cost report
demo: install docker runtime-image
	$(BIN)/wflo up --with-kafka
	$(BIN)/wflo demo
	@echo "[wflo] the local stack keeps running (Temporal UI: see 'wflo status'); stop it with: $(BIN)/wflo down"

## install + start every engine + lint + the whole suite
test: install litellm-venv docker runtime-image lint
	WFLO_LITELLM_VENV=$(abspath $(LITELLM_VENV)) $(PY) -m pytest tests

## the environment of requirements.lock, exactly (hashes checked), then the project and
## its lab extension (built with npm when its sources changed)
install:
	scripts/install.sh $(VENV)
	scripts/build-labextension.sh $(VENV)

## refresh requirements.lock on purpose: newest versions the floors allow
## (`make lock PACKAGE=redis` moves only that one; LOCK_UPGRADE= keeps every pin)
PACKAGE ?=
LOCK_UPGRADE ?= $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade)
LOCK_COMPILE = $(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" --quiet
lock:
	scripts/install.sh --uv-only $(VENV)
	$(LOCK_COMPILE) --group tooling $(LOCK_UPGRADE) -o requirements.lock
	$(LOCK_COMPILE) --group tooling --group bench -c requirements.lock $(LOCK_UPGRADE) \
		-o requirements-bench.lock
	$(BIN)/uv pip compile --group litellm-proxy --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" --quiet $(LOCK_UPGRADE) -o requirements-litellm.lock
	$(PY) scripts/check_lock.py
	$(PY) scripts/check_lock.py --lock requirements-bench.lock --groups tooling,bench
	$(PY) scripts/check_lock.py --lock requirements-litellm.lock --only-groups litellm-proxy

## what a refresh of the lock would break: lint + unit tests in a throwaway
## environment with the newest versions the floors allow (not part of `make test`)
upgrade-check: install
	scripts/upgrade-check.sh

docker:
	scripts/ensure-docker.sh

runtime-image: install docker
	$(BIN)/wflo image build

services: install
	$(BIN)/wflo up --with-kafka

lint: install
	$(BIN)/ruff check wflo_jupyter tests scripts bench
	$(BIN)/ruff format --check wflo_jupyter tests scripts bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd labextension && npm run --silent lint

## benchmarks (ratios against baselines measured in the same run) -> BENCHMARKS.md
## its own environment: requirements-bench.lock = the main lock + LiteLLM (the baseline)
BENCH_VENV ?= .venv-bench
bench: install docker runtime-image
	scripts/install.sh $(BENCH_VENV) requirements-bench.lock tooling,bench
	$(BENCH_VENV)/bin/python bench/sandbox.py
	$(BENCH_VENV)/bin/python bench/ledger.py
	$(BENCH_VENV)/bin/python bench/gateway.py
	$(BENCH_VENV)/bin/python bench/widget.py
	$(BENCH_VENV)/bin/python bench/lab_meter.py
	$(BENCH_VENV)/bin/python bench/startup.py
	$(BENCH_VENV)/bin/python bench/orchestration.py
	$(BENCH_VENV)/bin/python bench/events.py
	$(BENCH_VENV)/bin/python bench/cancel.py

## LiteLLM's proxy in its own environment (requirements-litellm.lock): the third-party
## OpenAI-compatible server of tests/integration/test_third_party_server.py
LITELLM_VENV ?= .venv-litellm
litellm-venv: install
	scripts/install-litellm.sh $(LITELLM_VENV) requirements-litellm.lock

unit: install
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) $(LITELLM_VENV) .pytest_cache .mypy_cache .ruff_cache
