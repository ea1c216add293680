# The two set-up commands of README.md: `make up` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: up test install install-dev check lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: anything that depends on it must find it installed (an unpinned torch pulls CUDA).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[embeddings,data,sim,redis]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[embeddings,data,sim,redis,diffusers,transformers,ray,dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

up: install
	$(BIN)/swell up

test: check
	$(BIN)/python -m pytest -n 2 -q

# Lint, format and types: part of `make test`, so CI runs them too.
check: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The peers the benchmarks compare with (huey, runai-model-streamer, fastsafetensors); see docs/benchmarks.md.
bench: install-dev
	$(BIN)/pip install -q -e '.[embeddings,data,sim,redis,diffusers,transformers,ray,dev,bench]'
	$(BIN)/python bench/gateway.py
