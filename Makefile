# mcp-guard — two commands on a fresh machine:
#   make demo   set everything up, then run the scripted tour on the embedded defaults
#   make test   set everything up, then run lint, type check and the whole test suite (e2e included)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
E2E    := tests/e2e
# pytest-xdist: two worker processes (this machine's two cores; most tests wait on real processes), whole
# files per worker so module-scoped fixtures are built once (README, "Development").
PYTEST_WORKERS ?= 2
XDIST  := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: setup venv peers opa demo test lint typecheck unit e2e bench clean

setup: venv peers opa

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Real npm MCP servers and the MCP Inspector the e2e tests drive, and the official MCP conformance suite
# with the Node 22 it needs (both pinned by lock files).
CONF := tests/conformance
peers: $(E2E)/node_modules/.installed $(CONF)/node_modules/.installed
$(E2E)/node_modules/.installed: $(E2E)/package.json $(E2E)/package-lock.json
	cd $(E2E) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@
$(CONF)/node_modules/.installed: $(CONF)/package.json $(CONF)/package-lock.json
	cd $(CONF) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# A real OPA server binary for the OPA-backend tests (built offline from Debian source packages).
opa:
	@if [ -x scripts/install-opa.sh ]; then scripts/install-opa.sh; fi

demo: venv $(E2E)/node_modules/.installed
	$(BIN)/mcp-guard demo

lint: venv
	$(BIN)/ruff check src tests connectors bench
	$(BIN)/ruff format --check src tests connectors bench

typecheck: venv
	$(BIN)/mypy
	$(BIN)/mypy bench

unit: venv
	$(BIN)/pytest -q $(XDIST) -m "not e2e"

e2e: setup
	$(BIN)/pytest -q $(XDIST) -m e2e

test: setup lint typecheck
	$(BIN)/pytest -q $(XDIST)

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(E2E)/node_modules .pytest_cache .mypy_cache .ruff_cache bench/results
