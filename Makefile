# circuits: make targets. Every user-facing target depends on `setup`, which
# creates the project venv (.venv) idempotently, so a fresh clone needs no manual step.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODEL  ?= zoo:toyworld
N      ?= 64
SEED   ?= 0
TASK   ?= ioi

.PHONY: setup test test-fast lint format ioi discover bench zoo zoo-check clean help

help:
	@echo "make setup       create .venv and install circuitlab (idempotent)"
	@echo "make ioi         run the IOI analysis on MODEL (default $(MODEL))"
	@echo "make discover    EAP, EAP-IG, ACDC and MIB curves for TASK on MODEL (results/discover/)"
	@echo "make bench       time the engines against transformer-lens (results/bench/)"
	@echo "make test        run the test suite"
	@echo "make lint        ruff"
	@echo "make zoo         retrain the bundled zoo (long; never in CI)"
	@echo "make zoo-check   load every bundled zoo model and check its accuracy targets"

setup: $(STAMP)

# torch goes in first and pinned: the CPU build 2.13.0 is on disk here, and an
# unpinned torch pulled in by a dependency would download gigabytes of CUDA wheels.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check circuits analyses tests benchmarks

format: setup
	$(BIN)/ruff format circuits analyses tests benchmarks

ioi: setup
	$(BIN)/circuits ioi --model $(MODEL) --n $(N) --seed $(SEED)

discover: setup
	$(BIN)/circuits discover --task $(TASK) --model $(MODEL) --seed $(SEED)

bench: setup
	$(BIN)/python benchmarks/bench_engines.py --out results/bench/engines.json
	$(BIN)/python benchmarks/bench_attribution.py --out results/bench/attribution.json

zoo: setup
	$(BIN)/circuits zoo train

zoo-check: setup
	$(BIN)/circuits zoo check

clean:
	rm -rf results .pytest_cache .ruff_cache
