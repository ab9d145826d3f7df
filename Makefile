# twofold developer commands. Each target creates .venv on first use (torch CPU wheel first, then the project).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test test-fast lint bench services browser clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]" -e ./sdk
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/twofold demo --json runs/demo/summary.json

services:
	bash scripts/ensure_services.sh

# Headless Chromium for the dashboard's browser tests: Debian's package, installed once, quietly. Never
# `playwright install` (its download fails here). Without apt-get the browser tests skip (fail under CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests"; \
	    $(SUDO) apt-get update -qq >/dev/null && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "no apt-get: install chromium yourself to run the browser tests"; fi; }

test: $(STAMP) services browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typing_view.py
	$(BIN)/mypy
	PYTHONPATH=.typing $(BIN)/lint-imports
	$(BIN)/hadolint deploy/Dockerfile

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache
