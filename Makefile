# wflo-jupyter: every target works from a fresh clone, as root, with no manual step.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test install docker runtime-image services lint unit bench clean

## install + start the local stack + run the quickstart notebook + print its cost report
demo: install docker runtime-image
	$(BIN)/wflo up --with-kafka
	$(BIN)/wflo demo notebooks/quickstart.ipynb
	@echo "[wflo] the local stack keeps running (Temporal UI: see 'wflo status'); stop it with: $(BIN)/wflo down"

## install + start every engine + lint + the whole suite
test: install docker runtime-image lint
	$(PY) -m pytest tests

install:
	scripts/install.sh $(VENV)

docker:
	scripts/ensure-docker.sh

runtime-image: docker
	scripts/build-runtime-image.sh

services: install
	$(BIN)/wflo up --with-kafka

lint: install
	$(BIN)/ruff check wflo_jupyter tests
	$(BIN)/ruff format --check wflo_jupyter tests
	$(BIN)/mypy

## benchmarks (ratios against baselines measured in the same run) -> BENCHMARKS.md
bench: install docker runtime-image
	$(PY) -m pip install --progress-bar off -q litellm fastapi orjson soundfile
	$(PY) bench/sandbox.py
	$(PY) bench/ledger.py
	$(PY) bench/gateway.py

unit: install
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
